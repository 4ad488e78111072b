"""The one interface every embedder implements (the registry that builds one by name is the package).

An embedder takes telephone-channel clips (float32 mono at :data:`analysis.channel.TELEPHONE_RATE`)
and returns one row per clip. It resamples internally to whatever its model expects
(``sample_rate``), so callers never need to know. Heavy models load lazily, once per process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.audio import resample
from analysis.channel import TELEPHONE_RATE


class EmbedderUnavailable(RuntimeError):
    """The embedder's backend is not installed or its model cannot be found."""


class Embedder(ABC):
    """Maps a batch of clips to a ``(len(batch), dim)`` float32 matrix."""

    name: str
    sample_rate: int  # the rate the model consumes

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output dimension (read from the model where it has one)."""

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns, for evidence a nurse can read; generic by default."""
        return [f"{self.name}_{i}" for i in range(self.dim)]

    @abstractmethod
    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Embed clips already at ``self.sample_rate``."""

    def embed(self, clips: Sequence[np.ndarray], sr: int = TELEPHONE_RATE) -> np.ndarray:
        """Embed clips recorded at ``sr`` (resampled to the model's rate first)."""
        native = [resample(np.asarray(c, dtype=np.float32), sr, self.sample_rate) for c in clips]
        if not native:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.asarray(self._embed_native(native), dtype=np.float32)
        if out.shape != (len(native), self.dim):
            raise RuntimeError(f"{self.name} returned shape {out.shape}, expected ({len(native)}, {self.dim})")
        return out

    def describe(self) -> dict[str, Any]:
        """What a model card records about the embedder, so a mismatched artifact can be refused."""
        return {"name": self.name, "dim": self.dim, "sample_rate": self.sample_rate}


@dataclass(frozen=True)
class EmbedderSources:
    """Where embedders whose weights live on local disk find them. The deployment's settings become
    this in the composition root; nothing in ``analysis`` reads the environment."""

    hear_path: Path | None = None  # a HeAR SavedModel folder
