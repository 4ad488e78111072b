"""One openSMILE pass per utterance for the shipped model, and evidence that ignores the line's gain.

The shipped model scores RMS-normalised eGeMAPS, so the evidence measures are read from the model's
own feature row (evidence version 2) instead of a second openSMILE run on the raw clip. These tests
pin what that must preserve: the evidence is the eGeMAPS of the normalised clip, loudness is the
level as heard, and turning the line up or down moves loudness by exactly that much and nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from analysis.audio import rms_normalise
from analysis.evidence import MEASURE_KEYS, measures_from_vector
from tests.worker_fixtures import calm, pain
from worker.context import WorkerContext
from worker.featurize import featurize


def voice_clips(n: int) -> list[np.ndarray]:
    """Synthetic voiced speech (calm and strained) at telephone level, 8 kHz."""
    return [(calm if k % 2 == 0 else pain)(120.0 + 20.0 * k, seed=k) for k in range(n)]


@pytest.fixture
def counted(shipped_context: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"clips": 0}
    real = shipped_context.embedder.embed

    def embed(clips: Any, sr: int = 8000) -> np.ndarray:
        calls["clips"] += len(clips)
        return real(clips, sr)

    monkeypatch.setattr(shipped_context.embedder, "embed", embed)
    return calls


def test_shipped_model_runs_opensmile_once_per_clip(shipped_context: WorkerContext, counted: dict[str, int]) -> None:
    assert shipped_context.model.rms_normalise and shipped_context.evidence_embedder is shipped_context.embedder
    clips = voice_clips(3)
    out = featurize(shipped_context, clips)
    assert counted["clips"] == 3
    assert out.features.shape == (3, shipped_context.model.dim) and len(out.measures) == 3


def test_evidence_is_egemaps_of_the_normalised_clip_with_loudness_as_heard(shipped_context: WorkerContext) -> None:
    clip = voice_clips(1)[0]
    out = featurize(shipped_context, [clip])
    names = shipped_context.evidence_embedder.feature_names
    normalised = shipped_context.evidence_embedder.embed([rms_normalise(clip)])[0]
    raw = shipped_context.evidence_embedder.embed([clip])[0]
    expected = measures_from_vector(normalised, names)
    as_heard = measures_from_vector(raw, names)
    for key in MEASURE_KEYS:
        if key == "loudness":
            assert out.measures[0][key] == pytest.approx(as_heard[key], abs=0.01)
        else:
            assert out.measures[0][key] == pytest.approx(expected[key], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("gain_db", [-12.0, 12.0])
def test_line_gain_moves_loudness_only(shipped_context: WorkerContext, gain_db: float) -> None:
    clip = voice_clips(1)[0]
    louder = np.clip(clip * 10.0 ** (gain_db / 20.0), -1.0, 1.0).astype(np.float32)
    assert np.abs(louder).max() < 1.0  # no clipping, so the gain is a pure level change
    base, moved = featurize(shipped_context, [clip, louder]).measures
    assert moved["loudness"] is not None and base["loudness"] is not None
    assert moved["loudness"] - base["loudness"] == pytest.approx(gain_db, abs=0.05)
    for key in MEASURE_KEYS:
        if key != "loudness" and base[key] is not None:
            assert moved[key] == pytest.approx(base[key], rel=1e-3, abs=1e-3), key
