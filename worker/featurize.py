"""Audio to model features and nurse-readable evidence, running each embedder as few times as possible.

Scoring and enrolment both need two things from a clip: the model's features (on the RMS-normalised
clip when the model card says so) and the eGeMAPS measures of :mod:`analysis.evidence`. openSMILE
has a fixed cost per call on top of its per-second work (``docs/scaling.md``), so when the model's
own features already contain the eGeMAPS functionals (the default ``egemaps`` model, or an
``egemaps+...`` fusion) the evidence is read from them instead of running openSMILE a second time.
Evidence is always measured on the normalised clip (evidence version 2); loudness is put back by the
gain the clip was normalised by, so "louder than usual" still means what the caller's line carried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.audio import rms_dbfs, rms_normalise
from analysis.embedders.fusion import ConcatEmbedder
from analysis.evidence import measures_from_vector
from worker.context import WorkerContext


@dataclass(frozen=True)
class Featurized:
    """Per clip: the model's feature row and the evidence measures (``None`` where unvoiced)."""

    features: np.ndarray  # (n_clips, model dim)
    measures: list[dict[str, float | None]]


def _evidence_columns(ctx: WorkerContext) -> slice | None:
    """Where the evidence functionals sit inside the model's feature row, if they do."""
    name = ctx.evidence_embedder.name
    if ctx.embedder is ctx.evidence_embedder or ctx.embedder.name == name:
        return slice(0, ctx.embedder.dim)
    if isinstance(ctx.embedder, ConcatEmbedder):
        return ctx.embedder.part_slices().get(name)
    return None


def featurize(ctx: WorkerContext, raw_clips: Sequence[np.ndarray]) -> Featurized:
    """Model features and evidence for 8 kHz float32 clips as heard on the line."""
    raw = [np.asarray(c, dtype=np.float32) for c in raw_clips]
    normalised = [rms_normalise(c) for c in raw]
    model_clips = normalised if ctx.model.rms_normalise else raw
    features = ctx.embedder.embed(model_clips)
    columns = _evidence_columns(ctx) if ctx.model.rms_normalise else None
    if columns is not None:
        functionals = features[:, columns]
    else:
        functionals = ctx.evidence_embedder.embed(normalised)
    names = ctx.evidence_embedder.feature_names
    measures = [
        measures_from_vector(row, names, level_offset_db=rms_dbfs(c) - rms_dbfs(n))
        for row, c, n in zip(functionals, raw, normalised, strict=True)
    ]
    return Featurized(features=features, measures=measures)


__all__ = ["Featurized", "featurize"]
