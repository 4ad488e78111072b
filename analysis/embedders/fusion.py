"""Concatenated embedders: ``egemaps+speaker`` puts two views of one utterance side by side.

eGeMAPS describes *how* the voice is produced (pitch, loudness, voice quality); a speaker
d-vector describes the voice's overall character. Relative to a caller's own baseline, movement in
either is evidence of a changed state, and on person-level splits the two together beat each alone
(see docs/detection.md). Each part keeps its own sample rate; the base class resamples for each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analysis.channel import TELEPHONE_RATE
from analysis.embedders.base import Embedder


class ConcatEmbedder(Embedder):
    """Embeds with every part and concatenates the rows (column order: parts in name order)."""

    sample_rate = TELEPHONE_RATE  # parts resample themselves from the telephone rate

    def __init__(self, parts: Sequence[Embedder]) -> None:
        if len(parts) < 2:
            raise ValueError("a concatenated embedder needs at least two parts")
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    @property
    def feature_names(self) -> list[str]:
        return [n for p in self.parts for n in p.feature_names]

    def part_slices(self) -> dict[str, slice]:
        """Where each part's columns sit, so a consumer can reuse one part (e.g. the d-vector)."""
        out, start = {}, 0
        for p in self.parts:
            out[p.name] = slice(start, start + p.dim)
            start += p.dim
        return out

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return np.hstack([p.embed(clips, TELEPHONE_RATE) for p in self.parts])

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "parts": [p.describe() for p in self.parts]}
