"""Clips are embedded as the utterances a call's VAD would cut from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from analysis.audio import rms_dbfs
from analysis.dataset import Clip
from analysis.embedders import Embedder
from analysis.features import ChannelConfig, FeatureCache, combine, extract, has_speech, prepare_utterances
from tests.worker_fixtures import calm, pain

SEGMENTED = ChannelConfig(telephone=True, rms_normalise=True, segment=True)


def write(path: Path, *parts: np.ndarray, rate: int = 8000) -> Path:
    sf.write(str(path), np.concatenate(parts).astype(np.float32), rate)
    return path


def silence(seconds: float, rate: int = 8000) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def test_a_clip_with_pauses_is_cut_into_the_calls_utterances_each_normalised(tmp_path: Path) -> None:
    # a loud and a quiet burst with a pause longer than the VAD's hangover between them
    clip = write(
        tmp_path / "two.wav", silence(0.3), 8.0 * calm(seconds=1.5), silence(1.2), pain(seconds=1.5), silence(0.3)
    )
    pieces = prepare_utterances(clip, SEGMENTED)
    assert len(pieces) == 2
    assert all(abs(rms_dbfs(p) - rms_dbfs(pieces[0])) < 0.5 for p in pieces)  # each on the same level
    whole = prepare_utterances(clip, ChannelConfig(telephone=True, rms_normalise=True))
    assert len(whole) == 1 and len(whole[0]) > sum(len(p) for p in pieces)


def test_a_silent_clip_has_no_row_and_a_spoken_one_is_its_utterances_vector(tmp_path: Path, egemaps: Embedder) -> None:
    spoken = write(tmp_path / "spoken.wav", silence(0.2), calm(seconds=2.0), silence(0.2))
    quiet = write(tmp_path / "quiet.wav", silence(2.0))
    clips = [Clip(path=spoken, speaker_id="s", label="neutral"), Clip(path=quiet, speaker_id="s", label="neutral")]
    cache = FeatureCache(tmp_path / "cache")

    X = extract(clips, egemaps, SEGMENTED, cache, progress=False)
    assert has_speech(X).tolist() == [True, False]
    (utterance,) = prepare_utterances(spoken, SEGMENTED)
    np.testing.assert_allclose(X[0], egemaps.embed([utterance])[0], rtol=1e-5, atol=1e-5)
    # cached under the segmented channel's own key, NaN row included, and not confused with whole clips
    np.testing.assert_array_equal(extract(clips, egemaps, SEGMENTED, cache, progress=False), X)
    assert cache.get(spoken, egemaps, ChannelConfig(telephone=True, rms_normalise=True)) is None


def test_combine_weights_pieces_by_length() -> None:
    out = combine([np.array([0.0, 2.0]), np.array([3.0, 2.0])], [1000, 2000], dim=2)
    np.testing.assert_allclose(out, [2.0, 2.0])
    assert np.isnan(combine([], [], dim=3)).all()


@pytest.mark.parametrize("segment", [False, True])
def test_the_channel_key_tells_segmented_from_whole(segment: bool) -> None:
    assert ('"segment": true' in ChannelConfig(segment=segment).key()) is segment
