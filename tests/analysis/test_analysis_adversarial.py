"""The domain-adversarial classifier: it learns distress, its reversal is a reversal, and it saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.baseline import RunningStats
from analysis.metrics import roc_auc
from analysis.model import PainModel
from analysis.training import TrainConfig
from tests.analysis_synthetic import fit_synthetic, make_corpus

torch = pytest.importorskip("torch")


def test_the_reversal_passes_values_forward_and_turns_gradients_back() -> None:
    from analysis.adversarial import _reverse

    z = torch.tensor([1.0, -2.0], requires_grad=True)
    out = _reverse(z, 0.3)
    assert torch.allclose(out, z)
    out.sum().backward()
    assert torch.allclose(z.grad, torch.tensor([-0.3, -0.3]))


def test_it_learns_distress_on_new_speakers_and_survives_a_save(tmp_path: Path) -> None:
    corpus = make_corpus(n_speakers=24, clips=20, dim=10, seed=0)
    names = np.unique(corpus.groups)
    train, test = corpus.speakers(names[:16]), corpus.speakers(names[16:])
    model = fit_synthetic(train, TrainConfig(classifier="adversarial", c_grid=(1.0,), draws=1, inner_folds=3))
    population = RunningStats.from_array(test.X)
    p = model.predict_proba(test.X, population)
    assert roc_auc(test.y, p) > 0.6
    again = fit_synthetic(train, TrainConfig(classifier="adversarial", c_grid=(1.0,), draws=1, inner_folds=3))
    np.testing.assert_allclose(again.predict_proba(test.X, population), p)  # seeded: the same model twice
    loaded = PainModel.load(model.save(tmp_path / "adversarial.joblib"))
    np.testing.assert_allclose(loaded.predict_proba(test.X, population), p)


def test_it_refuses_anything_but_two_classes() -> None:
    from analysis.adversarial import AdversarialMLP

    with pytest.raises(ValueError, match="binary"):
        AdversarialMLP(epochs=1).fit(np.zeros((4, 2)), np.array([0, 1, 2, 1]))
