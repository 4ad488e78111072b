"""What an operator watches of the scoring: latency from the VAD's cut to score and to flag, flags
raised, jobs retried and failed.

Module-level Prometheus metrics, as prometheus-client intends: they live in the process's default
registry and ``painline worker --metrics-port`` (or any process that scores) exposes them. Latency is
measured from the utterance row's ``created_at`` (written by the stream the moment the VAD closed
the utterance) to the commit of its score, and to the publish of the flag change it caused: the
nurse-facing delay, queueing included. Both clocks are the database host's and the worker's, so the
histograms assume synchronised clocks (NTP), as any multi-host deployment does.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Histogram

from schema.models import utcnow

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)

SCORE_LATENCY = Histogram(
    "painline_utterance_to_score_seconds",
    "From the VAD closing an utterance (its row written) to its score committed",
    buckets=LATENCY_BUCKETS_S,
)
FLAG_LATENCY = Histogram(
    "painline_utterance_to_flag_seconds",
    "From the VAD closing the utterance that raised or upgraded a flag to the flag published",
    buckets=LATENCY_BUCKETS_S,
)
FLAGS = Counter("painline_flags", "Flags raised or upgraded, by level and event", ["level", "event"])
JOBS_RETRIED = Counter("painline_jobs_retried", "Jobs that failed and were queued to run again", ["job"])
JOBS_FAILED = Counter("painline_jobs_failed", "Jobs that failed with no retry left", ["job"])


def since(created_at: datetime) -> float:
    """Seconds from ``created_at`` (naive UTC as stored, or aware) to now; never negative."""
    now = utcnow()
    if created_at.tzinfo is None and now.tzinfo is not None:
        now = now.replace(tzinfo=None)
    elif created_at.tzinfo is not None and now.tzinfo is None:
        created_at = created_at.replace(tzinfo=None)
    return max((now - created_at).total_seconds(), 0.0)


def scored(created_at: datetime) -> None:
    SCORE_LATENCY.observe(since(created_at))


def flag_published(level: str, event: str, created_at: datetime | None) -> None:
    FLAGS.labels(level=level, event=event).inc()
    if created_at is not None:
        FLAG_LATENCY.observe(since(created_at))


def job_failed(job_name: str, *, will_retry: bool) -> None:
    (JOBS_RETRIED if will_retry else JOBS_FAILED).labels(job=job_name).inc()


__all__ = [
    "FLAGS",
    "FLAG_LATENCY",
    "JOBS_FAILED",
    "JOBS_RETRIED",
    "SCORE_LATENCY",
    "flag_published",
    "job_failed",
    "scored",
]
