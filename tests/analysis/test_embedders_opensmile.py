"""The reused openSMILE instance gives exactly what a fresh ``process_signal`` gives, clip after clip.

Reusing one configured instance (reset between clips) saves openSMILE's per-clip set-up; these
tests are what allows it: any state leaking from one clip into the next, or a different input
conversion, would show up as a differing functional.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from analysis.embedders.opensmile_features import OpenSmileEmbedder
from tests.worker_fixtures import calm, pain


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        calm(110.0, seed=1),
        pain(210.0, seed=2, seconds=4.0),
        np.zeros(8000, dtype=np.float32),  # silence: no voiced frame
        (0.2 * rng.standard_normal(6000)).astype(np.float32),  # noise
        calm(160.0, seed=4, seconds=0.3),  # shorter than the padding minimum
        np.clip(pain(130.0, seed=5) * 12.0, -1.0, 1.0),  # clipped, near full scale
    ]


@pytest.mark.parametrize("name,feature_set", [("egemaps", "eGeMAPSv02"), ("compare", "ComParE_2016")])
def test_reused_instance_equals_process_signal_in_any_order(name: str, feature_set: str) -> None:
    embedder = OpenSmileEmbedder(feature_set, name)
    clips = _clips()
    fresh = []
    for clip in clips:
        padded = np.pad(clip, (0, max(0, 4000 - len(clip))))
        values = embedder._smile.process_signal(padded, 8000).to_numpy()[0]
        fresh.append(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0))
    forward = embedder.embed(clips)
    backward = embedder.embed(clips[::-1])[::-1]
    assert embedder._reused is not None  # the fast path really ran
    np.testing.assert_array_equal(forward, np.vstack(fresh))
    np.testing.assert_array_equal(backward, np.vstack(fresh))


def test_a_failing_instance_is_dropped_and_the_clip_still_embedded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = OpenSmileEmbedder()
    clip = calm(140.0, seed=9)
    expected = embedder.embed([clip])
    broken = embedder._reused
    assert broken is not None

    def fail(*_: object) -> np.ndarray:
        raise RuntimeError("simulated openSMILE failure")

    monkeypatch.setattr(broken, "functionals", fail)
    with caplog.at_level(logging.WARNING, logger="analysis.embedders.opensmile_features"):
        np.testing.assert_array_equal(embedder.embed([clip]), expected)
    assert "rebuilding" in caplog.text
    assert embedder._reused is None
    np.testing.assert_array_equal(embedder.embed([clip]), expected)  # a new instance, same answer
    assert embedder._reused is not None and embedder._reused is not broken
