"""From utterance probabilities to a call verdict: the one rule shared by evaluation and live calls.

Utterances are combined as a speech-weighted mean of log-odds, which treats each utterance as
independent evidence about the same state and lets a long utterance count more than a short
cough. A call with too little speech gets no verdict either way: silence is not evidence of calm.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

_CLIP = 1e-4


class CallVerdict(StrEnum):
    PAIN_LIKELY = "pain_likely"
    NO_PAIN = "no_pain"
    INCONCLUSIVE = "inconclusive"


def logit(p: np.ndarray | Sequence[float]) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1 - _CLIP)
    log_odds: np.ndarray = np.log(p / (1 - p))
    return log_odds


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def call_probability(
    probs: Sequence[float] | np.ndarray, speech_s: Sequence[float] | np.ndarray | None = None
) -> float:
    """Speech-weighted mean log-odds of the utterances, mapped back to a probability."""
    if len(probs) == 0:
        return float("nan")
    w = np.ones(len(probs)) if speech_s is None else np.maximum(np.asarray(speech_s, dtype=np.float64), 1e-3)
    return float(sigmoid(np.average(logit(probs), weights=w)))


def call_verdict(probability: float, total_speech_s: float, threshold: float, min_speech_s: float) -> CallVerdict:
    if total_speech_s < min_speech_s or not np.isfinite(probability):
        return CallVerdict.INCONCLUSIVE
    return CallVerdict.PAIN_LIKELY if probability >= threshold else CallVerdict.NO_PAIN
