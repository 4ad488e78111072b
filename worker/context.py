"""What every job needs, built once per worker process: database, Redis, the model and its embedders.

Loading a model and its embedders takes seconds (openSMILE's configuration, resemblyzer's torch
weights); a job takes tens of milliseconds. So the composition root builds one
:class:`WorkerContext` before the worker starts taking jobs, calls :func:`install`, and every job
reads it through :func:`current`. Jobs receive database ids only.

Fork safety. RQ's default :class:`rq.Worker` forks a "work horse" child per job. The child inherits
the loaded model and embedders (copy-on-write: no reload, which is the point), but must not reuse
the parent's database connections: two processes talking over one socket corrupt the protocol.
:func:`install` therefore registers an ``os.register_at_fork`` hook that calls
``engine.dispose(close=False)`` in every child, which gives the child a fresh, empty pool while
leaving the parent's connections open and untouched. redis-py notices a fork by itself (its pool
compares pids) and reconnects in the child. :meth:`WorkerContext.warm_up` runs every embedder once
in the parent, so the lazily built backends exist *before* the fork instead of being rebuilt in
every short-lived child. :class:`rq.SimpleWorker` runs jobs in the worker process itself and needs
nothing special. ``rq.SpawnWorker`` starts a fresh interpreter per job, which would see no
installed context: it is not supported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from analysis.channel import TELEPHONE_RATE
from analysis.embedders import Embedder, EmbedderSources, EmbedderUnavailable, get_embedder
from analysis.model import ModelMismatchError, PainModel
from analysis.segmentation import VadConfig
from schema.db import make_engine, session_factory
from worker.flags import WEBHOOK_TIMEOUT_S
from worker.shards import PopulationView

log = logging.getLogger(__name__)

EVIDENCE_EMBEDDER = "egemaps"
"""The embedder whose functionals feed :mod:`analysis.evidence`, whatever the model's embedder is."""

DEFAULT_SPEAKER_THRESHOLD = 0.70
"""Cosine similarity of resemblyzer d-vectors at or above which an utterance counts as the enrolled
caller. Same-speaker telephone-band pairs typically score 0.75-0.9 and different speakers 0.4-0.7;
0.70 errs toward excluding a doubtful utterance from a baseline, the cheap mistake."""

DEFAULT_FINALISE_GRACE_S = 600.0
"""How long after hang-up ``finalise_call`` keeps waiting for unscored utterances before giving a
verdict on what was scored (a permanently failing scoring job must not leave a call open forever)."""


@dataclass
class WorkerContext:
    """Process-wide resources and the few settings jobs need. Build with :meth:`build` or directly."""

    engine: Engine
    sessions: sessionmaker[Session]
    redis: Redis | None
    model: PainModel
    embedder: Embedder
    evidence_embedder: Embedder
    flag_channel: str  # the deployment's (``schema.contract.flag_channel``): no default that another could share
    # the deployment's ``schema.contract.call_channel``, where scores landing and verdicts are announced;
    # empty announces nothing (a tool scoring without a dashboard), never another deployment's channel
    call_channel: str = ""
    speaker_embedder: Embedder | None = None
    flag_threshold: float = 0.0  # 0: the model card's threshold
    min_speech_s: float = 3.0
    flag_webhook_url: str = ""
    flag_webhook_secret: str = ""
    speaker_threshold: float = DEFAULT_SPEAKER_THRESHOLD
    finalise_grace_s: float = DEFAULT_FINALISE_GRACE_S
    webhook_timeout_s: float = WEBHOOK_TIMEOUT_S
    vad: VadConfig = field(default_factory=VadConfig)  # the deployment's call segmentation, for enrolment
    # this process's shard of the population statistics (worker.population). SimpleWorker keeps what
    # it learns across jobs; a forking Worker's work horse starts from the parent's cold copy and
    # re-reads the shards, one statement more per job
    population: PopulationView = field(default_factory=PopulationView)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """The flag and verdict threshold: the configured override, else the model card's."""
        return self.flag_threshold if self.flag_threshold > 0 else self.model.threshold

    @classmethod
    def build(
        cls,
        *,
        database_url: str,
        redis: Redis | None,
        model_path: str | Path,
        embedder: str = "",
        speaker: bool = True,
        warm_up: bool = True,
        sources: EmbedderSources | None = None,
        **settings: Any,
    ) -> WorkerContext:
        """Load everything for a worker process from plain values (the composition root passes them).

        ``embedder`` is the configured embedder name (empty: whatever the model card says; a
        mismatch with the artifact raises :class:`analysis.model.ModelMismatchError`). ``speaker``
        False skips speaker verification; True tries the ``speaker`` embedder and carries on without
        it, logged, if resemblyzer is not installed. ``sources`` says where embedders with local
        weights find them. ``settings`` are the remaining dataclass fields
        (``flag_threshold``, ``min_speech_s``, ``flag_webhook_url``, ...).
        """
        model = PainModel.load(model_path, expect_embedder=embedder or None)
        model_embedder = get_embedder(model.embedder_name, sources)
        if model_embedder.dim != model.dim:
            raise ModelMismatchError(
                f"model {model.version} expects {model.dim}-d features but '{model.embedder_name}' "
                f"produces {model_embedder.dim}-d"
            )
        evidence = model_embedder if model.embedder_name == EVIDENCE_EMBEDDER else get_embedder(EVIDENCE_EMBEDDER)
        speaker_embedder = load_speaker_embedder() if speaker else None
        engine = make_engine(database_url)
        ctx = cls(
            engine=engine,
            sessions=session_factory(engine),
            redis=redis,
            model=model,
            embedder=model_embedder,
            evidence_embedder=evidence,
            speaker_embedder=speaker_embedder,
            **settings,
        )
        if warm_up:
            ctx.warm_up()
        return ctx

    def warm_up(self) -> None:
        """Run each embedder once on a second of quiet noise, so lazy backends load now, pre-fork."""
        clip = np.random.default_rng(0).normal(0.0, 0.01, TELEPHONE_RATE).astype(np.float32)
        for embedder in (self.embedder, self.evidence_embedder, self.speaker_embedder):
            if embedder is None:
                continue
            try:
                embedder.embed([clip])
            except EmbedderUnavailable:
                if embedder is self.speaker_embedder:
                    log.warning("speaker embedder unavailable; speaker verification is off")
                    self.speaker_embedder = None
                else:
                    raise

    def with_(self, **changes: Any) -> WorkerContext:
        return replace(self, **changes)

    def after_fork_in_child(self) -> None:
        """Drop the inherited connection pool without closing the parent's connections."""
        self.engine.dispose(close=False)


def load_speaker_embedder() -> Embedder | None:
    """The ``speaker`` embedder if resemblyzer and its weights are usable here, else None (logged)."""
    try:
        embedder = get_embedder("speaker")
        _ = embedder.dim  # loads the encoder: fails here, not in the middle of a job
    except EmbedderUnavailable as exc:
        log.warning("speaker verification off: %s", exc)
        return None
    return embedder


_current: WorkerContext | None = None
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    if _current is not None:
        _current.after_fork_in_child()


def install(ctx: WorkerContext) -> WorkerContext:
    """Make ``ctx`` the process's context (replacing any earlier one) and arm the fork hook."""
    global _current, _fork_hook_registered
    _current = ctx
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    return ctx


def uninstall() -> None:
    """Forget the installed context (tests; a worker never needs this)."""
    global _current
    _current = None


def current() -> WorkerContext:
    """The installed context; a job run in a process nobody prepared fails loudly here."""
    if _current is None:
        raise RuntimeError(
            "no WorkerContext installed in this process: the worker must be started through "
            "painline's composition root (worker.context.install) before it runs jobs"
        )
    return _current


__all__ = [
    "DEFAULT_FINALISE_GRACE_S",
    "DEFAULT_SPEAKER_THRESHOLD",
    "EVIDENCE_EMBEDDER",
    "WorkerContext",
    "current",
    "install",
    "load_speaker_embedder",
    "uninstall",
]
