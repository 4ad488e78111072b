"""Gain invariance on real speech: a caller 12 dB louder or quieter must not change the verdicts.

painline RMS-normalises each utterance after the codec, so the recording level should not reach the
model; this checks it end to end (gain, 8 kHz mu-law, the call's VAD cut, normalisation, eGeMAPS,
the trained model) on RAVDESS, over the whole task as the analysis issue's target is stated
(person-level, all 24 speakers, 5 grouped folds; the figures are in docs/detection.md). A small
subset of speakers would make the AUC itself too noisy to hold to a 0.01 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.training import TrainConfig
from painline.research import GainCheck, gain_check

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = (REPO / ".." / "shared" / "data").resolve()
MAX_AUC_SHIFT = 0.01

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA_DIR / "ravdess").is_dir(), reason=f"RAVDESS not found under {DATA_DIR}"),
]


@pytest.fixture(scope="module")
def gain() -> GainCheck:
    from analysis.embedders import get_embedder
    from painline.config import Settings

    settings = Settings().with_(data_dir=DATA_DIR, cache_dir=REPO / ".cache")
    check = gain_check("ravdess-distress", get_embedder("egemaps"), settings, TrainConfig())
    print(
        "\nperson-level AUC by test gain: "
        + ", ".join(f"{g:+.0f} dB {a:.4f}" for g, a in check.auc.items())
        + f" over {check.clips} clips; clips without speech by gain: {check.lost}"
    )
    return check


LOUD = pytest.mark.xfail(
    strict=True,
    reason=(
        "+12 dB costs 0.025 AUC on the live path (0.756 -> 0.731): louder, clipped speech is cut differently by "
        "the VAD; the whole-clip bench hid it (-0.006). Open: level-robust segmentation (docs/detection.md)"
    ),
)


@pytest.mark.parametrize("gain_db", [pytest.param(12.0, marks=LOUD), -12.0])
def test_person_level_auc_is_gain_invariant(gain: GainCheck, gain_db: float) -> None:
    delta = gain.auc[gain_db] - gain.auc[0.0]
    assert abs(delta) <= MAX_AUC_SHIFT, (
        f"AUC {gain.auc[0.0]:.4f} at 0 dB became {gain.auc[gain_db]:.4f} at {gain_db:+.0f} dB (delta {delta:+.4f})"
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "at -12 dB webrtcvad finds no utterance in 219 of 1424 RAVDESS clips: a quiet caller is not heard at all. "
        "Open: level-robust segmentation (docs/detection.md)"
    ),
)
def test_a_quiet_or_loud_caller_is_still_heard(gain: GainCheck) -> None:
    """Each clip that gives an utterance at 0 dB gives one at +-12 dB too (at most 1% lost)."""
    assert all(lost <= 0.01 * (gain.clips + lost) for lost in gain.lost.values()), gain.lost


def test_model_is_better_than_chance_at_0db(gain: GainCheck) -> None:
    """Invariance of a useless model would prove nothing."""
    assert gain.auc[0.0] > 0.6
