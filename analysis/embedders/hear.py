"""Health-acoustic embeddings from Google HeAR, loaded as a TensorFlow SavedModel from disk.

HeAR was trained on health sounds (coughs, breathing, speech), which is closer to pain vocalisation
than speech or general-audio models. Its weights are gated, so there is no download here: the site
downloads the SavedModel once and points ``path=`` at the folder (a deployment sets
``PAINLINE_HEAR_PATH``, which the composition root passes down as ``EmbedderSources.hear_path``).

The model consumes exactly 2 s at 16 kHz (``x: float32[batch, 32000]`` -> ``output_0``). Clips are
cut into 2 s windows with a 1 s hop by default (50 % overlap, so a groan that straddles a window
boundary still lies whole inside some window); a clip shorter than 2 s, and the last window of a
longer one, are zero-padded to 2 s. All windows of a batch of clips go through the model together,
and each clip's windows are mean-pooled into one vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.embedders.base import Embedder, EmbedderSources, EmbedderUnavailable

HEAR_RATE = 16000
WINDOW_SAMPLES = 2 * HEAR_RATE
PATH_SETTING = "PAINLINE_HEAR_PATH"
"""The deployment setting that becomes ``path`` (named in errors; this module never reads it)."""
_SIGNATURE = "serving_default"
_INPUT = "x"
_OUTPUT = "output_0"


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start offsets of the windows covering ``n_samples``; always at least one window.

    The last window may run past the end (it is zero-padded), but no window starts in padding.
    """
    if n_samples <= window:
        return [0]
    count = 1 + -(-(n_samples - window) // hop)
    return [i * hop for i in range(count)]


def _frame(clip: np.ndarray, window: int, hop: int) -> np.ndarray:
    starts = window_starts(len(clip), window, hop)
    out = np.zeros((len(starts), window), dtype=np.float32)
    for row, start in enumerate(starts):
        piece = clip[start : start + window]
        out[row, : len(piece)] = piece
    return out


def options_from_sources(sources: EmbedderSources) -> dict[str, Any]:
    """What this embedder takes from the deployment's :class:`EmbedderSources` (the registry passes it)."""
    return {"path": sources.hear_path}


class HearEmbedder(Embedder):
    """Mean-pooled HeAR embedding per clip; dim is whatever the SavedModel outputs (512 for HeAR).

    ``hop_s`` sets the window overlap (2.0 for none, which halves CPU cost); ``batch_size`` bounds
    how many 2 s windows are run through the model at once.
    """

    name = "hear"
    sample_rate = HEAR_RATE

    def __init__(self, path: str | Path | None = None, hop_s: float = 1.0, batch_size: int = 16) -> None:
        if not 0.0 < hop_s <= WINDOW_SAMPLES / HEAR_RATE:
            raise ValueError("hop_s must be in (0, 2] seconds")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.path = Path(path).expanduser() if path is not None and str(path) else None
        self.hop = round(hop_s * HEAR_RATE)
        self.batch_size = int(batch_size)
        self._loaded: Any = None  # the SavedModel object owns the variables the signature reads
        self._serve: Any = None
        self._dim: int | None = None

    def _load(self) -> Any:
        """Load the SavedModel once and check it has the signature HeAR publishes."""
        if self._serve is not None:
            return self._serve
        if self.path is None:
            raise EmbedderUnavailable(
                f"the 'hear' embedder needs the HeAR SavedModel folder: pass path= or set {PATH_SETTING}"
            )
        if not (self.path / "saved_model.pb").is_file():
            raise EmbedderUnavailable(f"no HeAR SavedModel at {self.path} (expected {self.path}/saved_model.pb)")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise EmbedderUnavailable("the 'hear' embedder needs TensorFlow: pip install 'painline[hear]'") from exc
        try:
            loaded = tf.saved_model.load(str(self.path))
        except Exception as exc:  # corrupt or incompatible SavedModel
            raise EmbedderUnavailable(f"could not load the HeAR SavedModel at {self.path}: {exc}") from exc
        serve = loaded.signatures.get(_SIGNATURE) if hasattr(loaded, "signatures") else None
        if serve is None:
            raise EmbedderUnavailable(f"the SavedModel at {self.path} has no {_SIGNATURE!r} signature")
        inputs = serve.structured_input_signature[1]
        if _INPUT not in inputs or _OUTPUT not in serve.structured_outputs:
            raise EmbedderUnavailable(
                f"the SavedModel at {self.path} is not HeAR-shaped: expected input {_INPUT!r} and output "
                f"{_OUTPUT!r}, found inputs {sorted(inputs)} and outputs {sorted(serve.structured_outputs)}"
            )
        width = inputs[_INPUT].shape[-1]
        if width is not None and int(width) != WINDOW_SAMPLES:
            raise EmbedderUnavailable(
                f"the SavedModel at {self.path} takes {width} samples, HeAR takes {WINDOW_SAMPLES}"
            )
        self._loaded, self._serve = loaded, serve
        return serve

    def _run(self, windows: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self._load()(**{_INPUT: tf.constant(windows, dtype=tf.float32)})[_OUTPUT]
        return np.asarray(out.numpy(), dtype=np.float32).reshape(len(windows), -1)

    @property
    def dim(self) -> int:
        if self._dim is None:
            declared = self._load().structured_outputs[_OUTPUT].shape
            if declared.rank == 2 and declared[-1] is not None:
                self._dim = int(declared[-1])
            else:  # shape not recorded in the signature: ask the model
                self._dim = int(self._run(np.zeros((1, WINDOW_SAMPLES), dtype=np.float32)).shape[1])
        return self._dim

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hop_s": self.hop / HEAR_RATE}

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        frames = [_frame(np.asarray(c, dtype=np.float32), WINDOW_SAMPLES, self.hop) for c in clips]
        counts = [len(f) for f in frames]
        stacked = np.concatenate(frames, axis=0)
        outputs = [self._run(stacked[i : i + self.batch_size]) for i in range(0, len(stacked), self.batch_size)]
        per_window = np.concatenate(outputs, axis=0).astype(np.float64)
        owner = np.repeat(np.arange(len(clips)), counts)
        pooled = np.zeros((len(clips), per_window.shape[1]), dtype=np.float64)
        np.add.at(pooled, owner, per_window)
        return (pooled / np.asarray(counts, dtype=np.float64)[:, None]).astype(np.float32)
