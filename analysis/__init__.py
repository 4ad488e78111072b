"""Pure audio and machine learning for painline.

Nothing here imports the web app, the database or the queue: every function takes arrays and
returns arrays or plain data, so the same code runs in training, evaluation and the live worker.
Heavy backends (torch, transformers, tensorflow) are imported only inside the embedder that needs
them, so importing ``analysis`` stays cheap for the telephony process.
"""
