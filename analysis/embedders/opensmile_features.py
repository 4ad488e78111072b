"""openSMILE functionals: eGeMAPSv02 (88-d, the default) and ComParE_2016 (6373-d).

eGeMAPS is a small, interpretable, expert-chosen set (pitch, loudness, jitter, shimmer, formants,
spectral balance) that runs far faster than real time on a CPU and needs no model download, which
is why it is the offline default. openSMILE is run at the telephone rate directly: resampling
8 kHz audio up to 16 kHz would add nothing but cost.

Cost per utterance. ``opensmile.Smile.process_signal`` builds, configures and frees a new openSMILE
instance for every clip and wraps the result in pandas, a fixed cost whatever the clip's length
(measured in ``docs/scaling.md``, Profiling). :class:`_ReusedSmile` keeps one
configured instance and resets it between clips (openSMILE's documented ``reset``: run again
without re-initialising), with the same input conversion, so the functionals are identical (a test
compares every value). It leans on opensmile-python's internals for the configuration; if they
ever change shape, the embedder says so once in the log and falls back to ``process_signal``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from analysis.channel import TELEPHONE_RATE
from analysis.embedders.base import Embedder, EmbedderUnavailable

log = logging.getLogger(__name__)

# openSMILE needs some signal to compute functionals; pad very short clips with silence up to this
_MIN_SAMPLES = TELEPHONE_RATE // 2


class _ReusedSmile:
    """One configured openSMILE instance for functionals at one sample rate, reset between clips."""

    def __init__(self, smile: Any, sample_rate: int) -> None:
        from opensmile.core import lib
        from opensmile.core.config import config

        options = smile._options()
        options["source"] = os.path.join(smile.default_config_root, config.EXTERNAL_INPUT_CONFIG)
        options["sampleRate"] = sample_rate
        options["nBits"] = 16
        self._lib = lib
        self._instance = lib.OpenSMILE()
        self._instance.initialize(
            config_file=smile.config_path,
            options=options,
            loglevel=smile.loglevel,
            log_file=smile.logfile,
            debug=smile.verbose,
        )
        self._source = config.EXTERNAL_SOURCE_COMPONENT
        self._sink = config.EXTERNAL_OUTPUT_COMPONENT.encode("ascii")
        self._rows: list[np.ndarray] = []
        self._callback = lib.ExternalSinkCallbackEx(self._collect)  # referenced here so it is not collected
        self._lock = threading.Lock()

    def _collect(self, data: Any, frames: int, size: int, _meta: Any, _param: Any) -> int:
        self._rows.append(np.ctypeslib.as_array(data, shape=(frames, size)).copy())
        return 1

    def functionals(self, clip: np.ndarray, dim: int) -> np.ndarray:
        """The clip's functionals; NaN where openSMILE produced no frame (as ``process_signal`` does)."""
        pcm = (np.asarray(clip, dtype=np.float32) * 32768).astype(np.int16)  # process_signal's conversion
        instance = self._instance
        with self._lock:
            self._rows.clear()
            # callbacks must be registered again after every reset
            instance._check_smile_result(
                self._lib.smileapi.smile_extsink_set_data_callback_ex(
                    instance._smileobj, self._sink, self._callback, None
                )
            )
            instance.external_audio_source_write_data(self._source, pcm.tobytes())
            instance.external_audio_source_set_eoi(self._source)
            instance.run()
            instance.reset()
            return self._rows[-1].ravel().astype(np.float64) if self._rows else np.full(dim, np.nan)

    def free(self) -> None:
        self._instance.free()


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

    _reused: _ReusedSmile | None = None
    _reuse_failed = False

    def _functionals(self, clip: np.ndarray) -> np.ndarray:
        if self._reused is None and not self._reuse_failed:
            try:
                self._reused = _ReusedSmile(self._smile, self.sample_rate)
            except Exception as exc:  # opensmile-python internals changed: the slow path still works
                self._reuse_failed = True
                log.warning("openSMILE instance reuse unavailable (%s); using process_signal", exc)
        if self._reused is not None:
            try:
                return self._reused.functionals(clip, self.dim)
            except Exception as exc:  # a broken instance is dropped, never reused
                log.warning("openSMILE instance failed (%s); rebuilding it for the next clip", exc)
                self._reused = None
        return np.asarray(self._smile.process_signal(clip, self.sample_rate).to_numpy()[0])

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for clip in clips:
            if len(clip) < _MIN_SAMPLES:
                clip = np.pad(clip, (0, _MIN_SAMPLES - len(clip)))
            values = self._functionals(clip)
            rows.append(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0))
        return np.vstack(rows)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "feature_set": self._feature_set}


def egemaps_embedder(**_: object) -> Embedder:
    return OpenSmileEmbedder("eGeMAPSv02", "egemaps")


def compare_embedder(**_: object) -> Embedder:
    return OpenSmileEmbedder("ComParE_2016", "compare")
