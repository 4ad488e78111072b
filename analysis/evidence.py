"""Evidence a nurse can read: a handful of eGeMAPS measures in plain units, and how they moved.

A probability says *that* the model thinks a caller sounds in pain, not *why*. Whatever embedder
the model uses, painline also computes the 88 eGeMAPSv02 functionals of every utterance (cheap:
openSMILE runs far faster than real time) and turns a few of them into quantities with units a
clinician already knows: pitch in semitones, level in dB, jitter in percent, speaking rate per
second. Comparing those with the caller's own normal voice gives sentences such as
``pitch +2.3 semitones`` or ``loudness +6.0 dB``.

Every measure is one functional times a unit scale. A caller's normal values are kept as running
statistics over the measure vector itself (:func:`measure_vector`, :func:`baseline_measures`), so
the comparison needs nothing but this module. Measures that only exist on voiced speech (pitch,
jitter, shimmer, HNR) are ``None`` for an utterance openSMILE found no voicing in, rather than a
misleading zero.

Level. Since version 2 the functionals are taken on the RMS-normalised clip, the same clip the
model sees, so the worker runs openSMILE once per utterance instead of twice. openSMILE's voicing
decisions depend on the input level, so measures from normalised audio are also steadier across
phones and line levels (recording level is a confound in this project's data). Only loudness is
about level itself; it is restored by the normalisation gain (``level_offset_db``), which is exact
for ``equivalentSoundLevel_dBp`` because that functional is a level in dB.

Pure functions, no I/O: the worker computes, the database stores the dicts these return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.baseline import RunningStats

EVIDENCE_VERSION = 2
"""Bumped whenever a measure's definition changes, so stored measures can be told apart.

1: functionals of the clip as heard. 2: functionals of the RMS-normalised clip, loudness restored."""

PITCH_FUNCTIONAL = "F0semitoneFrom27.5Hz_sma3nz_amean"


@dataclass(frozen=True)
class Measure:
    """One plain-unit measure: ``value = scale * functional``.

    ``floor`` is the smallest change worth telling a nurse about, in the measure's unit. It is also
    the smallest spread assumed for a baseline, so a caller heard only once or twice (spread zero
    or tiny) does not turn every small wobble into a huge standardised change.
    """

    key: str
    label: str
    unit: str
    functional: str
    scale: float = 1.0
    voiced_only: bool = False
    floor: float = 0.5
    decimals: int = 1
    level: bool = False  # a level in dB: shifted back by the normalisation gain

    def format_delta(self, delta: float) -> str:
        return f"{self.label} {delta:+.{self.decimals}f} {self.unit}"


MEASURES: tuple[Measure, ...] = (
    Measure("pitch", "pitch", "semitones", PITCH_FUNCTIONAL, voiced_only=True, floor=0.5),
    Measure(
        "pitch_range",
        "pitch range",
        "semitones",
        "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2",
        voiced_only=True,
        floor=0.5,
    ),
    Measure("loudness", "loudness", "dB", "equivalentSoundLevel_dBp", floor=1.0, level=True),
    Measure(
        "jitter",
        "jitter",
        "%",
        "jitterLocal_sma3nz_amean",
        scale=100.0,
        voiced_only=True,
        floor=0.2,
        decimals=2,
    ),
    Measure(
        "shimmer",
        "shimmer",
        "dB",
        "shimmerLocaldB_sma3nz_amean",
        voiced_only=True,
        floor=0.1,
        decimals=2,
    ),
    Measure("hnr", "harmonics-to-noise ratio", "dB", "HNRdBACF_sma3nz_amean", voiced_only=True, floor=0.5),
    Measure("syllable_rate", "speaking rate", "syllables/s", "loudnessPeaksPerSec", floor=0.2),
    Measure("voiced_rate", "voiced segments", "per s", "VoicedSegmentsPerSec", floor=0.2),
)
"""The measures reported, in display order. ``syllable_rate`` counts loudness peaks per second, the
usual eGeMAPS proxy for syllable rate; it is labelled a rate, not a syllable count."""

MEASURE_KEYS: tuple[str, ...] = tuple(m.key for m in MEASURES)
_BY_KEY = {m.key: m for m in MEASURES}


class MissingFunctional(KeyError):
    """The functionals given are not eGeMAPSv02 (a measure's source column is absent)."""


def _is_voiced(values: Mapping[str, float]) -> bool:
    """openSMILE reports 0 for F0 when it found no voiced frame (the ``nz`` functionals)."""
    f0 = float(values.get(PITCH_FUNCTIONAL, 0.0))
    return np.isfinite(f0) and f0 > 0.0


def measures_from_functionals(values: Mapping[str, float], level_offset_db: float = 0.0) -> dict[str, float | None]:
    """Plain-unit measures from one utterance's eGeMAPSv02 functionals (name -> value).

    ``level_offset_db`` is added to level measures: pass minus the gain the clip was normalised by,
    so "louder than usual" survives normalisation.
    """
    missing = [m.functional for m in MEASURES if m.functional not in values]
    if missing:
        raise MissingFunctional(f"not eGeMAPSv02 functionals: missing {', '.join(missing)}")
    voiced = _is_voiced(values)
    out: dict[str, float | None] = {}
    for m in MEASURES:
        raw = float(values[m.functional])
        if (m.voiced_only and not voiced) or not np.isfinite(raw):
            out[m.key] = None
        else:
            out[m.key] = m.scale * raw + (level_offset_db if m.level else 0.0)
    return out


def measures_from_vector(
    vector: Sequence[float] | np.ndarray, feature_names: Sequence[str], level_offset_db: float = 0.0
) -> dict[str, float | None]:
    """As :func:`measures_from_functionals`, for a row of the ``egemaps`` embedder's output."""
    row = np.asarray(vector, dtype=np.float64).ravel()
    if len(row) != len(feature_names):
        raise ValueError(f"{len(row)} values for {len(feature_names)} feature names")
    return measures_from_functionals(dict(zip(feature_names, row.tolist(), strict=True)), level_offset_db)


def measure_vector(measures: Mapping[str, float | None]) -> np.ndarray | None:
    """The measures as a float64 vector in :data:`MEASURE_KEYS` order, or None if any is missing.

    This is the space a caller's *evidence baseline* lives in (running statistics over these
    vectors). Utterances missing a measure (no voicing) are left out of baselines whole rather
    than skewing one dimension toward zero.
    """
    values = [measures.get(key) for key in MEASURE_KEYS]
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    return np.asarray(values, dtype=np.float64)


def baseline_measures(stats: RunningStats) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and spread per measure of a baseline kept over :func:`measure_vector` rows.

    Returns two empty dicts for an empty baseline. The spread is the sample standard deviation,
    zero until two utterances were seen (:func:`compare_to_baseline` floors it).
    """
    if stats.n == 0:
        return {}, {}
    if stats.dim != len(MEASURE_KEYS):
        raise ValueError(f"evidence baseline has {stats.dim} dimensions, expected {len(MEASURE_KEYS)}")
    std = stats.std
    mean = {key: float(stats.mean[i]) for i, key in enumerate(MEASURE_KEYS)}
    spread = {key: float(std[i]) for i, key in enumerate(MEASURE_KEYS)}
    return mean, spread


def combine_measures(items: Iterable[tuple[Mapping[str, float | None], float]]) -> dict[str, float | None]:
    """Weighted mean per measure over several utterances (weights: seconds of speech).

    A measure missing from an utterance (unvoiced) is left out of that measure's mean only, so
    one cough does not erase the call's pitch.
    """
    sums = dict.fromkeys(MEASURE_KEYS, 0.0)
    weights = dict.fromkeys(MEASURE_KEYS, 0.0)
    for measures, weight in items:
        w = max(float(weight), 0.0)
        for key in MEASURE_KEYS:
            value = measures.get(key)
            if value is None or not np.isfinite(value) or w == 0.0:
                continue
            sums[key] += w * float(value)
            weights[key] += w
    return {key: (sums[key] / weights[key] if weights[key] > 0 else None) for key in MEASURE_KEYS}


def compare_to_baseline(
    measures: Mapping[str, float | None],
    baseline_measures_mean: Mapping[str, float],
    baseline_measures_std: Mapping[str, float],
    *,
    top: int = 3,
) -> list[dict[str, Any]]:
    """The measures that moved most against the caller's baseline, biggest standardised change first.

    For each measure present on both sides: ``delta = value - baseline mean`` (plain units) and
    ``z = delta / max(baseline spread, floor)``. Changes smaller than the measure's ``floor`` are not
    reported at all: a 0.1-semitone "rise" is noise, not evidence. Each entry carries the signed
    delta as text (``"pitch +2.3 semitones"``) plus the numbers behind it.
    """
    moved: list[dict[str, Any]] = []
    for m in MEASURES:
        value = measures.get(m.key)
        base = baseline_measures_mean.get(m.key)
        if value is None or base is None or not (np.isfinite(value) and np.isfinite(base)):
            continue
        delta = float(value) - float(base)
        if abs(delta) < m.floor:
            continue
        spread = float(baseline_measures_std.get(m.key, 0.0) or 0.0)
        z = delta / max(spread if np.isfinite(spread) else 0.0, m.floor)
        moved.append(
            {
                "measure": m.key,
                "label": m.label,
                "unit": m.unit,
                "value": round(float(value), m.decimals + 1),
                "baseline": round(float(base), m.decimals + 1),
                "delta": round(delta, m.decimals + 1),
                "z": round(z, 2),
                "text": m.format_delta(delta),
            }
        )
    moved.sort(key=lambda item: abs(item["z"]), reverse=True)
    return moved[: max(top, 0)]


def describe_measures(measures: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Absolute values with units, for a call with no baseline to compare against."""
    out = []
    for m in MEASURES:
        value = measures.get(m.key)
        if value is None:
            continue
        out.append(
            {
                "measure": m.key,
                "label": m.label,
                "unit": m.unit,
                "value": round(float(value), m.decimals + 1),
                "text": f"{m.label} {float(value):.{m.decimals}f} {m.unit}",
            }
        )
    return out


def measure(key: str) -> Measure:
    """The definition of one measure by key (``pitch``, ``loudness``, ...)."""
    return _BY_KEY[key]


__all__ = [
    "EVIDENCE_VERSION",
    "MEASURES",
    "MEASURE_KEYS",
    "PITCH_FUNCTIONAL",
    "Measure",
    "MissingFunctional",
    "baseline_measures",
    "combine_measures",
    "compare_to_baseline",
    "describe_measures",
    "measure",
    "measure_vector",
    "measures_from_functionals",
    "measures_from_vector",
]
