"""The model artifact: persistence, refusal of mismatched artifacts, and the two-path scoring rule."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from analysis.aggregate import sigmoid
from analysis.baseline import RunningStats
from analysis.metrics import roc_auc
from analysis.model import POPULATION_PRIOR_N, ModelMismatchError, PainModel, card_path, shrunk_population
from tests.analysis_synthetic import Synthetic, fit_synthetic, make_corpus

TRAIN_SPEAKERS = [f"spk{i:02d}" for i in range(12)]
HELD_OUT_SPEAKERS = [f"spk{i:02d}" for i in range(12, 18)]


@pytest.fixture(scope="module")
def corpus() -> Synthetic:
    return make_corpus(n_speakers=18, clips=20, dim=10, offset_sd=3.0, effect=1.0, seed=3)


@pytest.fixture(scope="module")
def model(corpus: Synthetic) -> PainModel:
    return fit_synthetic(corpus.speakers(TRAIN_SPEAKERS))


@pytest.fixture(scope="module")
def held_out(corpus: Synthetic) -> Synthetic:
    return corpus.speakers(HELD_OUT_SPEAKERS)


@pytest.fixture
def saved(model: PainModel, tmp_path):
    return model.save(tmp_path / "models" / "m.joblib")


def _baseline(data: Synthetic, speaker: str, k: int) -> tuple[RunningStats, np.ndarray]:
    """Baseline from the speaker's first k normal clips, and the rows left to score."""
    rows = np.flatnonzero(data.groups == speaker)
    enrol = rows[data.normal[rows]][:k]
    return RunningStats.from_array(data.X[enrol]), np.setdiff1d(rows, enrol)


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip_gives_identical_probabilities(model: PainModel, held_out: Synthetic, saved) -> None:
    loaded = PainModel.load(saved, expect_embedder="synthetic", expect_dim=10)
    np.testing.assert_array_equal(loaded.predict_proba(held_out.X), model.predict_proba(held_out.X))
    base, rows = _baseline(held_out, HELD_OUT_SPEAKERS[0], 3)
    np.testing.assert_array_equal(
        loaded.predict_proba(held_out.X[rows], baseline=base), model.predict_proba(held_out.X[rows], baseline=base)
    )
    assert loaded.version == model.version and loaded.blend == model.blend


def test_card_json_written_beside_artifact(model: PainModel, saved) -> None:
    path = card_path(saved)
    assert path == saved.parent / "m.card.json" and path.exists()
    card = json.loads(path.read_text())
    assert card["model_version"] == model.version and len(card["model_version"]) == 12
    assert card["threshold"]["value"] == pytest.approx(model.threshold)
    assert 0.0 < card["threshold"]["value"] < 1.0
    assert card["embedder"] == {"name": "synthetic", "dim": 10}
    assert card["features_used"] == 10


def test_load_refuses_other_embedder_naming_both(saved) -> None:
    with pytest.raises(ModelMismatchError) as err:
        PainModel.load(saved, expect_embedder="clap")
    assert "synthetic" in str(err.value) and "clap" in str(err.value)


def test_load_refuses_wrong_dimension(model: PainModel, saved) -> None:
    with pytest.raises(ModelMismatchError, match="10-d"):
        PainModel.load(saved, expect_dim=512)
    with pytest.raises(ModelMismatchError):
        model.predict_proba(np.zeros((2, 9)))


@pytest.mark.parametrize("blob", [{"format_version": 999, "model": None}, ["not", "a", "model"], {"model": 1}])
def test_load_refuses_wrong_format(tmp_path, blob: object) -> None:
    path = tmp_path / "bad.joblib"
    joblib.dump(blob, path)
    with pytest.raises(ModelMismatchError, match="not a painline model artifact"):
        PainModel.load(path)


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        PainModel.load(tmp_path / "absent.joblib")


# --------------------------------------------------------------------------- scoring rule


def test_caller_weight_is_zero_without_baseline(model: PainModel, held_out: Synthetic) -> None:
    assert model.caller_weight(0) == 0.0
    X = held_out.X[:10]
    np.testing.assert_array_equal(model.predict_proba(X, baseline=RunningStats.empty(10)), model.predict_proba(X))


def test_baseline_weight_was_learned_for_this_data(model: PainModel) -> None:
    """Speaker offsets dominate by construction: held-out selection must give the caller path weight."""
    assert model.caller_clf is not None
    assert [k for k, _ in model.blend] == [1, 3, 5]
    assert model.caller_weight(5) > 0.0
    assert model.caller_weight(100) == model.caller_weight(5)


def test_predict_proba_with_baseline_uses_the_blend(model: PainModel, held_out: Synthetic) -> None:
    base, rows = _baseline(held_out, HELD_OUT_SPEAKERS[1], 5)
    X = held_out.X[rows]
    w = model.caller_weight(base.n)
    assert w > 0.0
    lp, lb = model.population_logit(X), model.caller_logit(X, base)
    expected = sigmoid(model.blended_cal(w * lb + (1 - w) * lp))
    got = model.predict_proba(X, baseline=base)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert not np.allclose(got, model.predict_proba(X))
    np.testing.assert_allclose(model.predict_proba(X), sigmoid(model.population_cal(lp)), rtol=1e-12)


def test_blend_weight_controls_the_mix(model: PainModel, held_out: Synthetic) -> None:
    base, rows = _baseline(held_out, HELD_OUT_SPEAKERS[2], 3)
    X = held_out.X[rows]
    lp, lb = model.population_logit(X), model.caller_logit(X, base)
    original = list(model.blend)
    try:
        model.blend = [(1, 0.3), (4, 0.9)]
        assert model.caller_weight(3) == 0.3 and model.caller_weight(4) == 0.9
        np.testing.assert_allclose(
            model.predict_proba(X, baseline=base), sigmoid(model.blended_cal(0.3 * lb + 0.7 * lp)), rtol=1e-12
        )
        model.blend = [(1, 0.0)]  # a zero weight is exactly the population path
        np.testing.assert_array_equal(model.predict_proba(X, baseline=base), model.predict_proba(X))
    finally:
        model.blend = original


def test_baseline_improves_auc_on_held_out_speakers(model: PainModel, held_out: Synthetic) -> None:
    ys, p_pop, p_base = [], [], []
    for speaker in HELD_OUT_SPEAKERS:
        base, rows = _baseline(held_out, speaker, 5)
        ys.append(held_out.y[rows])
        p_pop.append(model.predict_proba(held_out.X[rows]))
        p_base.append(model.predict_proba(held_out.X[rows], baseline=base))
    y = np.concatenate(ys)
    auc_pop, auc_base = roc_auc(y, np.concatenate(p_pop)), roc_auc(y, np.concatenate(p_base))
    assert auc_base > auc_pop + 0.1, (auc_pop, auc_base)
    assert auc_base > 0.75, auc_base


def test_the_live_population_takes_over_smoothly(model: PainModel, held_out: Synthetic) -> None:
    """No cliff: with no live data the training scale is used, each live utterance moves the scale a
    little, and a large live population is used almost as it is."""
    X = held_out.X[:20]
    rng = np.random.default_rng(0)
    shifted = rng.normal(100.0, 5.0, size=(20 * POPULATION_PRIOR_N, 10))
    default = model.predict_proba(X)
    np.testing.assert_array_equal(model.predict_proba(X, population=RunningStats.empty(10)), default)
    steps = [model.predict_proba(X, population=RunningStats.from_array(shifted[:n])) for n in range(1, 120)]
    jumps = [float(np.max(np.abs(b - a))) for a, b in zip([default, *steps], steps, strict=False)]
    assert max(jumps) < 0.1, max(jumps)  # each utterance nudges; none switches the scale
    live_only = model.normaliser.standardise(X, RunningStats.from_array(shifted))
    assert model.normaliser.population is not None
    nearly = shrunk_population(RunningStats.from_array(shifted), model.normaliser.population, POPULATION_PRIOR_N)
    np.testing.assert_allclose(model.normaliser.standardise(X, nearly), live_only, rtol=0.06, atol=0.06)
    assert not np.allclose(steps[-1], default)
    base, rows = _baseline(held_out, HELD_OUT_SPEAKERS[0], 3)
    np.testing.assert_array_equal(
        model.predict_proba(held_out.X[rows], population=None, baseline=base),
        model.predict_proba(held_out.X[rows], population=RunningStats.empty(10), baseline=base),
    )


def test_live_population_equal_to_training_changes_nothing(model: PainModel, held_out: Synthetic) -> None:
    assert model.normaliser.population is not None
    same = model.normaliser.population.copy()
    np.testing.assert_allclose(model.predict_proba(held_out.X, population=same), model.predict_proba(held_out.X))
