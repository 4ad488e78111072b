"""bench/population: specificity at the threshold as a new hotline's population statistics fill up.

    python -m bench.population [--corpus ased --corpus spanish] [--max-speakers N] [--orders 5]

The shipped model's threshold was chosen for 90% specificity on its training population. A hotline
whose callers it never heard (another language, another phone network) starts on the training
scale and moves onto its own (``analysis.model.shrunk_population``); this bench replays unlabelled
arrivals of corpora the model was not trained on through that rule, exactly as the worker scores
and folds them, so the cost of the first calls and the worth of seeding are measured, not assumed.
"""
