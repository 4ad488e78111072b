"""analysis.evidence: plain-unit measures from eGeMAPS functionals, and deltas against a baseline."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.baseline import RunningStats
from analysis.embedders import Embedder
from analysis.evidence import (
    MEASURE_KEYS,
    MissingFunctional,
    baseline_measures,
    combine_measures,
    compare_to_baseline,
    describe_measures,
    measure_vector,
    measures_from_functionals,
    measures_from_vector,
)
from tests.worker_fixtures import calm, pain

FUNCTIONALS = {
    "F0semitoneFrom27.5Hz_sma3nz_amean": 30.0,
    "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2": 2.5,
    "equivalentSoundLevel_dBp": -25.0,
    "jitterLocal_sma3nz_amean": 0.0125,
    "shimmerLocaldB_sma3nz_amean": 1.25,
    "HNRdBACF_sma3nz_amean": 8.0,
    "loudnessPeaksPerSec": 4.0,
    "VoicedSegmentsPerSec": 2.0,
    "mfcc1_sma3_amean": 99.0,  # ignored
}


def test_measures_convert_units() -> None:
    m = measures_from_functionals(FUNCTIONALS)
    assert m == {
        "pitch": 30.0,
        "pitch_range": 2.5,
        "loudness": -25.0,
        "jitter": pytest.approx(1.25),  # fraction -> percent
        "shimmer": 1.25,
        "hnr": 8.0,
        "syllable_rate": 4.0,
        "voiced_rate": 2.0,
    }


def test_unvoiced_utterance_has_no_voice_quality_measures() -> None:
    m = measures_from_functionals({**FUNCTIONALS, "F0semitoneFrom27.5Hz_sma3nz_amean": 0.0})
    assert m["pitch"] is None and m["jitter"] is None and m["shimmer"] is None and m["hnr"] is None
    assert m["loudness"] == -25.0 and m["syllable_rate"] == 4.0
    assert measure_vector(m) is None


def test_missing_functional_is_refused() -> None:
    values = dict(FUNCTIONALS)
    del values["equivalentSoundLevel_dBp"]
    with pytest.raises(MissingFunctional):
        measures_from_functionals(values)


def test_compare_to_baseline_hand_computed() -> None:
    measures = {
        "pitch": 42.3,
        "loudness": -20.0,
        "jitter": 1.5,
        "shimmer": 1.05,
        "hnr": 9.0,
        "syllable_rate": 3.0,
    }
    mean = {
        "pitch": 40.0,
        "loudness": -26.0,
        "jitter": 1.0,
        "shimmer": 1.0,
        "hnr": 12.0,
        "syllable_rate": 3.1,
    }
    std = {"pitch": 1.0, "loudness": 1.5, "jitter": 0.1, "shimmer": 0.2, "hnr": 0.0, "syllable_rate": 0.5}
    moved = compare_to_baseline(measures, mean, std, top=5)
    by_key = {m["measure"]: m for m in moved}
    # loudness: +6 dB over a 1.5 dB spread -> z 4; jitter +0.5 % over 0.2 % floor (spread 0.1) -> z 2.5
    # pitch +2.3 st / 1.0 -> 2.3; hnr -3 dB / 0.5 dB floor (spread 0) -> -6
    # shimmer +0.05 dB and rate -0.1/s are below their floors: not reported
    assert [m["measure"] for m in moved] == ["hnr", "loudness", "jitter", "pitch"]
    assert by_key["loudness"]["text"] == "loudness +6.0 dB"
    assert by_key["loudness"]["delta"] == pytest.approx(6.0)
    assert by_key["loudness"]["z"] == pytest.approx(4.0)
    assert by_key["pitch"]["text"] == "pitch +2.3 semitones"
    assert by_key["pitch"]["z"] == pytest.approx(2.3)
    assert by_key["jitter"]["text"] == "jitter +0.50 %"
    assert by_key["jitter"]["z"] == pytest.approx(2.5)
    assert by_key["hnr"]["text"] == "harmonics-to-noise ratio -3.0 dB"
    assert by_key["hnr"]["z"] == pytest.approx(-6.0)
    assert compare_to_baseline(measures, mean, std, top=2) == moved[:2]


def test_compare_skips_measures_missing_on_either_side() -> None:
    moved = compare_to_baseline({"pitch": None, "loudness": -20.0}, {"pitch": 30.0}, {"pitch": 1.0})
    assert moved == []


def test_baseline_measures_from_running_stats() -> None:
    rows = np.array([[30.0, 2.0, -25.0, 1.0, 1.0, 10.0, 3.0, 2.0], [32.0, 2.0, -23.0, 1.4, 1.2, 12.0, 4.0, 2.0]])
    mean, std = baseline_measures(RunningStats.from_array(rows))
    assert list(mean) == list(MEASURE_KEYS)
    assert mean["pitch"] == pytest.approx(31.0)
    assert std["pitch"] == pytest.approx(np.sqrt(2.0))  # sample std of 30, 32
    assert mean["loudness"] == pytest.approx(-24.0)
    assert baseline_measures(RunningStats.empty(len(MEASURE_KEYS))) == ({}, {})


def test_combine_measures_weights_by_speech_and_skips_missing() -> None:
    combined = combine_measures([({"pitch": 30.0, "loudness": -20.0}, 3.0), ({"pitch": None, "loudness": -30.0}, 1.0)])
    assert combined["pitch"] == pytest.approx(30.0)
    assert combined["loudness"] == pytest.approx(-22.5)
    assert combined["jitter"] is None
    described = describe_measures(combined)
    assert [d["measure"] for d in described] == ["pitch", "loudness"]
    assert described[0]["text"] == "pitch 30.0 semitones"


def test_real_egemaps_pitch_and_moves(egemaps: Embedder) -> None:
    """openSMILE on synthetic speech: pitch in semitones re 27.5 Hz, and pain-like clips move as built."""
    X = egemaps.embed([calm(140.0, seed=1), pain(140.0, seed=2)])
    m_calm = measures_from_vector(X[0], egemaps.feature_names)
    m_pain = measures_from_vector(X[1], egemaps.feature_names)
    assert m_calm["pitch"] == pytest.approx(12 * np.log2(140.0 / 27.5), abs=0.5)
    assert m_pain["pitch"] is not None and m_calm["pitch"] is not None
    assert m_pain["loudness"] is not None and m_calm["loudness"] is not None
    assert m_pain["pitch"] - m_calm["pitch"] == pytest.approx(5.0, abs=0.6)  # built 5 semitones higher
    assert m_pain["loudness"] - m_calm["loudness"] == pytest.approx(20 * np.log10(2.5), abs=1.5)
    calm_present = {k: v for k, v in m_calm.items() if v is not None}  # what a stored baseline mean holds
    moved = compare_to_baseline(m_pain, calm_present, {}, top=8)
    texts = {m["measure"]: m["text"] for m in moved}
    assert texts["pitch"].startswith("pitch +")
    assert texts["loudness"].startswith("loudness +")
