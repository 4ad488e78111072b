"""Raising triage flags, and telling the hotline about them.

One :class:`~schema.models.Flag` per call. It is raised the first time the call's running
probability reaches the threshold with enough speech behind it, and after that only ever
*upgraded*: a nurse must never see a flag shrink or vanish because the caller calmed down for a
sentence. A resolved flag is left alone; the nurse has already decided.

Two notifications follow a raise or a level upgrade, both sent only after the database
transaction committed (a flag that was rolled back must not be announced):

- a Redis ``PUBLISH`` on the deployment's flag channel (``WorkerContext.flag_channel``, named by
  :func:`schema.contract.flag_channel`), which the web UI's live view subscribes to;
- an HTTP ``POST`` to the hotline's own webhook, if one is configured, signed with HMAC-SHA256.

Both carry the same small JSON document: event, flag and call ids, level, severity and the call's
probability. Never audio, phone numbers or patient references: anything that wants more reads
the database with its own authorisation. Notifications are at-most-once and best effort
(failures are logged, never raised): the flag row in the database is the record, the messages
only make it appear sooner.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from schema.models import Call, Flag, FlagLevel, FlagStatus, utcnow

if TYPE_CHECKING:  # worker.context imports this module for its webhook timeout
    from worker.context import WorkerContext

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Painline-Signature"
"""Webhook header: ``sha256=<hex HMAC-SHA256 of the exact request body, keyed by the shared secret>``."""

WEBHOOK_TIMEOUT_S = 3.0

_LEVEL_RANK = {FlagLevel.LOW.value: 0, FlagLevel.MEDIUM.value: 1, FlagLevel.HIGH.value: 2}


def level_for(probability: float, threshold: float) -> FlagLevel:
    """How far above the threshold the call is, in thirds of the remaining range.

    Just over the threshold is ``low``; the top third between threshold and certainty is ``high``.
    """
    span = max(1.0 - threshold, 1e-6)
    margin = (probability - threshold) / span
    if margin >= 2.0 / 3.0:
        return FlagLevel.HIGH
    if margin >= 1.0 / 3.0:
        return FlagLevel.MEDIUM
    return FlagLevel.LOW


@dataclass(frozen=True)
class FlagChange:
    """What :func:`raise_or_update_flag` did, to announce after the commit."""

    event: str  # "flag.raised" or "flag.upgraded"
    flag_id: int
    call_id: int
    level: str
    severity: float
    probability: float
    status: str
    utterance_id: int | None = None  # the utterance whose score caused the change (latency tracing)


def raise_or_update_flag(session: Session, call: Call, probability: float, threshold: float) -> FlagChange | None:
    """Insert the call's flag, or raise its severity; None when nothing worth announcing changed.

    The caller holds the call's row lock (``SELECT ... FOR UPDATE`` on PostgreSQL), which is what
    makes "one flag per call" safe between concurrent scoring jobs; the unique constraint on
    ``flags.call_id`` backs it up.
    """
    level = level_for(probability, threshold)
    flag = session.scalars(select(Flag).where(Flag.call_id == call.id)).one_or_none()
    if flag is None:
        now = utcnow()
        flag = Flag(
            call_id=call.id,
            patient_id=call.patient_id,
            severity=float(probability),
            level=level.value,
            status=FlagStatus.OPEN.value,
            raised_at=now,
            updated_at=now,
        )
        session.add(flag)
        session.flush()
        return _change("flag.raised", flag, probability)
    if flag.status == FlagStatus.RESOLVED.value or probability <= flag.severity:
        return None
    old_rank = _LEVEL_RANK.get(flag.level, -1)
    flag.severity = float(probability)
    flag.level = level.value
    flag.updated_at = utcnow()
    session.flush()
    if _LEVEL_RANK[level.value] > old_rank:
        return _change("flag.upgraded", flag, probability)
    return None  # a higher severity within the same level: stored, not worth a notification


@dataclass(frozen=True)
class FlagState:
    """The columns of a call's flag that deciding a raise or an upgrade needs, read with the call's scores."""

    id: int
    level: str
    severity: float
    status: str


def raise_or_upgrade_known(
    session: Session,
    call_id: int,
    patient_id: int | None,
    flag: FlagState | None,
    probability: float,
    threshold: float,
) -> FlagChange | None:
    """:func:`raise_or_update_flag` for a caller that has already read the flag: one statement at most.

    The scoring job reads the flag in the same statement as the call's scores, under the call's row
    lock, so the rule (raise once, then only upgrade, never touch a resolved flag) is the same and
    the same lock makes it safe; only the round trips differ.
    """
    level = level_for(probability, threshold)
    now = utcnow()
    if flag is None:
        flag_id = session.execute(
            insert(Flag)
            .values(
                call_id=call_id,
                patient_id=patient_id,
                severity=float(probability),
                level=level.value,
                status=FlagStatus.OPEN.value,
                raised_at=now,
                updated_at=now,
            )
            .returning(Flag.id)
        ).scalar_one()
        raised = FlagState(int(flag_id), level.value, float(probability), FlagStatus.OPEN.value)
        return _change_of("flag.raised", raised, call_id, probability)
    if flag.status == FlagStatus.RESOLVED.value or probability <= flag.severity:
        return None
    session.execute(
        update(Flag).where(Flag.id == flag.id).values(severity=float(probability), level=level.value, updated_at=now)
    )
    if _LEVEL_RANK[level.value] > _LEVEL_RANK.get(flag.level, -1):
        upgraded = FlagState(flag.id, level.value, float(probability), flag.status)
        return _change_of("flag.upgraded", upgraded, call_id, probability)
    return None  # a higher severity within the same level: stored, not worth a notification


def _change_of(event: str, flag: FlagState, call_id: int, probability: float) -> FlagChange:
    return FlagChange(
        event=event,
        flag_id=flag.id,
        call_id=call_id,
        level=flag.level,
        severity=round(float(flag.severity), 4),
        probability=round(float(probability), 4),
        status=flag.status,
    )


def _change(event: str, flag: Flag, probability: float) -> FlagChange:
    return FlagChange(
        event=event,
        flag_id=int(flag.id),
        call_id=int(flag.call_id),
        level=flag.level,
        severity=round(float(flag.severity), 4),
        probability=round(float(probability), 4),
        status=flag.status,
    )


def flag_message(change: FlagChange) -> dict[str, Any]:
    """The JSON document published and POSTed: ids and scores only, nothing about the caller."""
    return {
        "event": change.event,
        "flag_id": change.flag_id,
        "call_id": change.call_id,
        "level": change.level,
        "severity": change.severity,
        "probability": change.probability,
        "status": change.status,
        "utterance_id": change.utterance_id,
        "sent_at": int(time.time()),
    }


def encode(message: dict[str, Any]) -> bytes:
    """Canonical bytes: the webhook signature is over exactly these."""
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header_value: str) -> bool:
    """Constant-time check of a signature header, for hotlines (and tests) receiving the webhook."""
    return hmac.compare_digest(sign(body, secret), header_value or "")


def publish(redis: Redis, change: FlagChange, channel: str) -> bool:
    """PUBLISH the flag on ``channel``; False (logged) if Redis is unreachable."""
    try:
        redis.publish(channel, encode(flag_message(change)))
    except (RedisError, OSError) as exc:
        log.warning("flag %s: publish failed (%s)", change.flag_id, type(exc).__name__)
        return False
    return True


def post_webhook(url: str, secret: str, change: FlagChange, timeout_s: float = WEBHOOK_TIMEOUT_S) -> bool:
    """POST the flag to the hotline's webhook, signed; False (logged) on any failure.

    Refuses to send without a secret: an unsigned triage notification could be forged by anyone
    who learns the URL, so a missing secret is a configuration error, not a reason to send less.
    """
    if not url:
        return False
    if not secret:
        log.error("flag %s: webhook configured without a secret; not sent", change.flag_id)
        return False
    body = encode(flag_message(change))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("flag %s: webhook POST failed (%s)", change.flag_id, type(exc).__name__)
        return False
    if not 200 <= status < 300:
        log.warning("flag %s: webhook answered HTTP %d", change.flag_id, status)
        return False
    return True


def announce(
    change: FlagChange,
    redis: Redis | None,
    *,
    channel: str,
    webhook_url: str = "",
    webhook_secret: str = "",
    webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
) -> None:
    """Publish and POST one committed flag change; never raises."""
    if redis is not None:
        publish(redis, change, channel)
    if webhook_url:
        post_webhook(webhook_url, webhook_secret, change, webhook_timeout_s)


def announce_from(ctx: WorkerContext, change: FlagChange) -> None:
    """:func:`announce` with the worker's own channel and webhook: what every job calls after its commit."""
    announce(
        change,
        ctx.redis,
        channel=ctx.flag_channel,
        webhook_url=ctx.flag_webhook_url,
        webhook_secret=ctx.flag_webhook_secret,
        webhook_timeout_s=ctx.webhook_timeout_s,
    )


__all__ = [
    "SIGNATURE_HEADER",
    "FlagChange",
    "FlagState",
    "announce",
    "announce_from",
    "encode",
    "flag_message",
    "level_for",
    "post_webhook",
    "publish",
    "raise_or_update_flag",
    "raise_or_upgrade_known",
    "sign",
    "verify",
]
