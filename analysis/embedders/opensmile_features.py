"""openSMILE functionals: eGeMAPSv02 (88-d, the default) and ComParE_2016 (6373-d).

eGeMAPS is a small, interpretable, expert-chosen set (pitch, loudness, jitter, shimmer, formants,
spectral balance) that runs far faster than real time on a CPU and needs no model download, which
is why it is the offline default. openSMILE is run at the telephone rate directly: resampling
8 kHz audio up to 16 kHz would add nothing but cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from analysis.channel import TELEPHONE_RATE
from analysis.embedders.base import Embedder, EmbedderUnavailable, register

# openSMILE needs some signal to compute functionals; pad very short clips with silence up to this
_MIN_SAMPLES = TELEPHONE_RATE // 2


class OpenSmileEmbedder(Embedder):
    """Utterance-level functionals of an openSMILE feature set."""

    sample_rate = TELEPHONE_RATE

    def __init__(self, feature_set: str = "eGeMAPSv02", name: str = "egemaps") -> None:
        self.name = name
        self._feature_set = feature_set

    @cached_property
    def _smile(self):  # type: ignore[no-untyped-def]
        try:
            import opensmile
        except ImportError as exc:  # pragma: no cover - opensmile is a core dependency
            raise EmbedderUnavailable("opensmile is not installed") from exc
        return opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, self._feature_set),
            feature_level=opensmile.FeatureLevel.Functionals,
        )

    @property
    def dim(self) -> int:
        return len(self._smile.feature_names)

    @property
    def feature_names(self) -> list[str]:
        return list(self._smile.feature_names)

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for clip in clips:
            if len(clip) < _MIN_SAMPLES:
                clip = np.pad(clip, (0, _MIN_SAMPLES - len(clip)))
            values = self._smile.process_signal(clip, self.sample_rate).to_numpy()[0]
            rows.append(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0))
        return np.vstack(rows)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "feature_set": self._feature_set}


@register("egemaps")
def _egemaps(**_: object) -> Embedder:
    return OpenSmileEmbedder("eGeMAPSv02", "egemaps")


@register("compare")
def _compare(**_: object) -> Embedder:
    return OpenSmileEmbedder("ComParE_2016", "compare")
