"""The offline LOCO bench's own rules: how a call with unheard utterances scores, what a variant is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.aggregate import call_probability
from analysis.training import TrainConfig
from bench.detection.loco_offline import AGGREGATIONS, DAMAGES, Variant, aggregate, augmented
from painline.research import Pooling, Weighting

DATA_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def test_the_shipped_aggregation_is_the_workers() -> None:
    probs = [0.2, 0.7, 0.9, 0.4]
    assert aggregate(np.array(probs), "mean_logodds") == pytest.approx(call_probability(probs))


def test_an_unheard_utterance_is_left_out_and_a_call_heard_not_at_all_cannot_flag() -> None:
    assert aggregate(np.array([0.8, np.nan]), "mean_logodds") == pytest.approx(0.8)
    for how in AGGREGATIONS:
        assert aggregate(np.array([np.nan, np.nan]), how) == 0.0


def test_top_half_listens_to_the_loudest_evidence() -> None:
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    assert aggregate(probs, "top_half") == pytest.approx(0.9)
    assert aggregate(probs, "median") == pytest.approx(0.5)


def test_variants_parse_and_refuse_unknown_options() -> None:
    assert Variant.parse("egemaps+speaker/aligned") == Variant("egemaps+speaker", Pooling(aligned=True))
    assert str(Variant.parse("egemaps")) == "egemaps"
    with pytest.raises(SystemExit, match="unknown variant option"):
        Variant.parse("egemaps/shuffled")
    with pytest.raises(SystemExit, match="unknown variant option"):
        Variant.parse("egemaps/nap0")


def test_a_variant_names_its_weighting_and_projection_and_reads_back_the_same() -> None:
    variant = Variant.parse("egemaps/aligned/speakers/notiming/vocal/adversarial/nap8")
    assert variant == Variant("egemaps", Pooling(True, Weighting.SPEAKERS), 8, True, True, "adversarial")
    assert Variant.parse(str(variant)) == variant
    cfg = variant.train_config(TrainConfig())
    assert cfg.nap_components == 8 and cfg.drop_timing_features and cfg.classifier == "adversarial"
    assert Variant.parse("egemaps/mlp").train_config(TrainConfig()).classifier == "mlp"


def test_every_robustness_row_damages_the_audio_and_none_changes_the_cut_or_level_rule() -> None:
    assert set(DAMAGES) == {
        "white_20db",
        "white_10db",
        "babble_20db",
        "babble_10db",
        "frames_lost_2pct",
        "frames_lost_5pct",
        "gain_plus_12db",
        "gain_minus_12db",
    }
    for channel in DAMAGES.values():
        assert channel.segment and channel.rms_normalise and channel.telephone
        assert channel.damaged or channel.gain_db


@pytest.mark.skipif(not (DATA_DIR / "ravdess").is_dir(), reason=f"RAVDESS not found under {DATA_DIR}")
@pytest.mark.parametrize("embedder", ["egemaps", pytest.param("speaker", marks=pytest.mark.slow)])
def test_augmentation_adds_one_damaged_copy_per_heard_clip_keeping_speaker_and_label(
    tmp_path: Path, embedder: str
) -> None:
    from analysis.embedders import get_embedder
    from painline.config import Settings
    from painline.research import DEFAULT_CHANNEL, load_task_data

    settings = Settings().with_(data_dir=DATA_DIR, cache_dir=tmp_path)
    emb = get_embedder(embedder)  # the copies are embedded by the variant's embedder, whichever it is
    data = load_task_data("ravdess-distress", emb, settings, DEFAULT_CHANNEL, max_speakers=2)
    more = augmented(data, emb, settings)
    n = len(data.y)
    assert n < len(more.y) <= 2 * n
    np.testing.assert_array_equal(more.X[:n], data.X)  # the clean clips come first, untouched
    rows = [data.clips.index(c) for c in more.clips[n:]]
    np.testing.assert_array_equal(more.y[n:], data.y[rows])
    np.testing.assert_array_equal(more.groups[n:], data.groups[rows])
    assert not np.allclose(more.X[n:], data.X[rows])  # the copies were damaged
    assert np.isfinite(more.X).all()
