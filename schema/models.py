"""Every table painline stores, as SQLAlchemy 2.0 declarative models.

Table and column names are a contract: the telephony blueprints, the RQ workers and the web UI all
code against them, and ``migrations/versions`` must produce exactly this metadata (a test compares
them). Status vocabularies are plain strings guarded by CHECK constraints rather than native
PostgreSQL enums, so SQLite and PostgreSQL migrate the same way and adding a value is an ordinary
migration; the :class:`enum.StrEnum` classes below are the Python spelling of those vocabularies.

Privacy shapes the schema: patients are keyed by an HMAC of the caller number (see
:mod:`schema.identity`), never the number itself, call audio lives only in
:class:`UtteranceAudio` until the utterance is scored, and audio, embeddings, voice measures,
baselines and voiceprints are encrypted at rest (:mod:`schema.crypto`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from schema.crypto import EncryptedBytes, EncryptedJSON

# ---------------------------------------------------------------------------------------------------
# portable column types


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only kind timestamp columns accept)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned timezone-aware in UTC.

    SQLite has no time zones: a plain ``DateTime(timezone=True)`` returns naive values there and
    aware ones on PostgreSQL. This type makes both backends behave alike. Naive datetimes are
    refused rather than guessed at, because a naive ``datetime.now()`` is local time and would be
    stored hours off without anyone noticing.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC timestamp column; pass an aware datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # stored as text: one fixed offset keeps lexical order equal to time order
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
"""JSON everywhere, JSONB on PostgreSQL (smaller, and comparable for equality)."""

# ---------------------------------------------------------------------------------------------------
# vocabularies


class CallStatus(StrEnum):
    STREAMING = "streaming"
    ENDED = "ended"
    FINALISED = "finalised"
    ERROR = "error"


class Verdict(StrEnum):
    PENDING = "pending"
    PAIN_LIKELY = "pain_likely"
    NO_PAIN = "no_pain"
    INCONCLUSIVE = "inconclusive"


class StreamStatus(StrEnum):
    """Media Stream state from Twilio's status callback (``stream-started`` -> ``started`` etc.)."""

    STARTED = "started"
    STOPPED = "stopped"
    ERROR = "error"


class UtteranceStatus(StrEnum):
    PENDING = "pending"
    SCORED = "scored"
    FAILED = "failed"
    SKIPPED = "skipped"


class ContributionSource(StrEnum):
    ENROLMENT = "enrolment"
    RESOLVED_CALL = "resolved_call"


class FlagLevel(StrEnum):
    """Suggested flag levels. Not enforced by a CHECK: the scoring policy owns this vocabulary."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class FlagStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class FlagLabel(StrEnum):
    """The nurse's outcome label on a flag; resolved calls feed baselines through it."""

    PAIN_CONFIRMED = "pain_confirmed"
    NO_PAIN = "no_pain"
    UNSURE = "unsure"


class UserRole(StrEnum):
    NURSE = "nurse"
    ADMIN = "admin"
    AUDITOR = "auditor"


def _one_of(column: str, vocabulary: type[StrEnum], *, nullable: bool = False) -> CheckConstraint:
    """A CHECK constraint limiting ``column`` to the vocabulary, named ``ck_<table>_<column>``."""
    values = ", ".join(f"'{member.value}'" for member in vocabulary)
    condition = f"{column} IN ({values})"
    if nullable:
        condition = f"{column} IS NULL OR {condition}"
    return CheckConstraint(condition, name=column)


# ---------------------------------------------------------------------------------------------------
# base

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names, so migrations can drop or alter constraints (SQLite batch mode
needs names) and the same names exist on both backends."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}  # noqa: RUF012


# ---------------------------------------------------------------------------------------------------
# identity and calls


class Patient(Base):
    """A caller, known only by an opaque key: ``hmac:<hex>`` of their number or ``ref:<reference>``."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    calls: Mapped[list[Call]] = relationship(back_populates="patient", passive_deletes=True)

    __table_args__ = (CheckConstraint("key LIKE 'hmac:%' OR key LIKE 'ref:%'", name="key_prefix"),)


class StreamToken(Base):
    """A single-use token embedded in the Media Stream URL.

    Consumed with ``UPDATE stream_tokens SET used_at = :now WHERE nonce = :n AND used_at IS NULL``;
    a rowcount of 1 means this request won the token.
    """

    __tablename__ = "stream_tokens"

    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    call_sid: Mapped[str] = mapped_column(String(64), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column()


class Call(Base):
    """One hotline call: its stream, its consent, and the running verdict."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_sid: Mapped[str] = mapped_column(String(64), unique=True)
    stream_sid: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=CallStatus.STREAMING.value)
    consent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    verdict: Mapped[str] = mapped_column(String(16), default=Verdict.PENDING.value)
    call_score: Mapped[float | None] = mapped_column(Float)
    speech_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    stream_status: Mapped[str | None] = mapped_column(String(16))
    stream_error: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    patient: Mapped[Patient | None] = relationship(back_populates="calls")
    utterances: Mapped[list[Utterance]] = relationship(
        back_populates="call", passive_deletes=True, order_by="Utterance.seq"
    )
    flag: Mapped[Flag | None] = relationship(back_populates="call", passive_deletes=True)

    __table_args__ = (
        _one_of("status", CallStatus),
        _one_of("verdict", Verdict),
        _one_of("stream_status", StreamStatus, nullable=True),
        CheckConstraint("speech_s >= 0", name="speech_s_nonnegative"),
        Index(None, "patient_id", "started_at"),
        Index(None, "started_at"),
    )


class Utterance(Base):
    """A stretch of speech the VAD cut from a call; ``seq`` orders them within the call."""

    __tablename__ = "utterances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    speech_s: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=UtteranceStatus.PENDING.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    call: Mapped[Call] = relationship(back_populates="utterances")
    audio: Mapped[UtteranceAudio | None] = relationship(back_populates="utterance", passive_deletes=True)
    scores: Mapped[list[Score]] = relationship(back_populates="utterance", passive_deletes=True)

    __table_args__ = (
        UniqueConstraint("call_id", "seq"),
        _one_of("status", UtteranceStatus),
        CheckConstraint("seq >= 0", name="seq_nonnegative"),
        CheckConstraint("end_ms >= start_ms", name="span_ordered"),
        CheckConstraint("speech_s >= 0", name="speech_s_nonnegative"),
    )


class UtteranceAudio(Base):
    """The exact 8 kHz mu-law bytes Twilio sent for one utterance; deleted once it is scored."""

    __tablename__ = "utterance_audio"

    utterance_id: Mapped[int] = mapped_column(ForeignKey("utterances.id", ondelete="CASCADE"), primary_key=True)
    mulaw: Mapped[bytes] = mapped_column(EncryptedBytes)

    utterance: Mapped[Utterance] = relationship(back_populates="audio")


class Score(Base):
    """One model's output for one utterance.

    Unique on (utterance, model version), so a retried scoring job can never count twice.
    ``embedding`` is the embedder's float32 output, kept so baselines can grow from resolved calls.
    ``speaker_vector`` is the utterance's speaker embedding (when the caller has a voiceprint), kept
    so the speaker check pools the call's speech so far; ``speaker_similarity`` is that pooled
    similarity, the value the decision to apply the baseline was made on.
    """

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    utterance_id: Mapped[int] = mapped_column(ForeignKey("utterances.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(128))
    probability: Mapped[float] = mapped_column(Float)
    baseline_applied: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    baseline_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    speaker_similarity: Mapped[float | None] = mapped_column(Float)
    speaker_vector: Mapped[bytes | None] = mapped_column(EncryptedBytes)
    embedding: Mapped[bytes] = mapped_column(EncryptedBytes)
    features: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    utterance: Mapped[Utterance] = relationship(back_populates="scores")

    __table_args__ = (
        UniqueConstraint("utterance_id", "model_version"),
        CheckConstraint("probability >= 0 AND probability <= 1", name="probability_range"),
        CheckConstraint("baseline_n >= 0", name="baseline_n_nonnegative"),
    )


# ---------------------------------------------------------------------------------------------------
# baselines and voiceprints


class BaselineContribution(Base):
    """One embedding folded into a baseline, kept so a contribution can be excluded and rebuilt."""

    __tablename__ = "baseline_contributions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    baseline_id: Mapped[int] = mapped_column(ForeignKey("baselines.id", ondelete="CASCADE"))
    utterance_id: Mapped[int | None] = mapped_column(ForeignKey("utterances.id", ondelete="SET NULL"), index=True)
    call_id: Mapped[int | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(16))
    embedding: Mapped[bytes] = mapped_column(EncryptedBytes)
    # seconds of speech in the utterance: an enrolment utterance's audio is gone once enrolled, so
    # this is the one record of its length an admin can judge it by (NULL for rows older than 0004)
    speech_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    included: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    baseline: Mapped[Baseline] = relationship(back_populates="contributions")

    __table_args__ = (
        # NULL utterance_ids never collide, so enrolment rows without an utterance are unaffected
        UniqueConstraint("baseline_id", "utterance_id"),
        _one_of("source", ContributionSource),
    )


class Baseline(Base):
    """A patient's own running statistics in one embedder's space, for one model version."""

    __tablename__ = "baselines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    embedder: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    stats: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON)
    count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # the contributions ``stats`` should be made of; loaded only when asked for (one subquery)
    included_count: Mapped[int] = column_property(
        select(func.count(BaselineContribution.id))
        .where(BaselineContribution.baseline_id == id, BaselineContribution.included.is_(True))
        .correlate_except(BaselineContribution)
        .scalar_subquery(),
        deferred=True,
    )

    contributions: Mapped[list[BaselineContribution]] = relationship(back_populates="baseline", passive_deletes=True)

    __table_args__ = (
        UniqueConstraint("patient_id", "embedder", "model_version"),
        CheckConstraint("count >= 0", name="count_nonnegative"),
    )

    @hybrid_property
    def stale(self) -> bool:
        """A rebuild is pending: ``count`` (what ``stats`` was built from) differs from the included
        contributions, because an admin excluded, re-included or reset and the rebuild job has not run.

        The one statement of the rule: the dashboard shows "being rebuilt" by it, and the outbox
        sweep re-enqueues lost rebuilds by it (as SQL, ``select(Baseline.id).where(Baseline.stale)``).
        """
        return self.count != self.included_count

    @stale.inplace.expression
    @classmethod
    def _stale_expression(cls) -> ColumnElement[bool]:
        return cls.count != cls.included_count


class PopulationStats(Base):
    """One shard of the statistics over everyone, used before a patient has a baseline of their own.

    The deployment's population for an (embedder, model version) is the merge of all its shards
    (``RunningStats.merge_in``; :func:`worker.population.merged_population`). Each scoring worker
    writes only the shard it holds, so no single row is locked by every scored utterance.
    """

    __tablename__ = "population_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedder: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    shard: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType)
    count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("embedder", "model_version", "shard"),
        CheckConstraint("shard >= 0", name="shard_nonnegative"),
        CheckConstraint("count >= 0", name="count_nonnegative"),
    )


class Voiceprint(Base):
    """A patient's mean speaker embedding, to notice when someone else is on the line."""

    __tablename__ = "voiceprints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), unique=True)
    embedder: Mapped[str] = mapped_column(String(128))
    vector: Mapped[bytes] = mapped_column(EncryptedBytes)
    count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("count >= 0", name="count_nonnegative"),)


# ---------------------------------------------------------------------------------------------------
# triage, audit, users


class Flag(Base):
    """The nurse-facing flag for a call: one per call, its severity updated as the call goes on."""

    __tablename__ = "flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), unique=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"), index=True)
    severity: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=FlagStatus.OPEN.value)
    label: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    acknowledged_by: Mapped[str | None] = mapped_column(String(150))
    resolved_at: Mapped[datetime | None] = mapped_column()
    resolved_by: Mapped[str | None] = mapped_column(String(150))

    call: Mapped[Call] = relationship(back_populates="flag")

    __table_args__ = (
        _one_of("status", FlagStatus),
        _one_of("label", FlagLabel, nullable=True),
        Index(None, "status", "raised_at"),
    )


class AuditEvent(Base):
    """Who did what to which object. Written through :func:`schema.audit.record`, never directly."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(150))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (Index(None, "object_type", "object_id"),)


class User(Base):
    """A web UI account."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", passive_deletes=True)

    __table_args__ = (_one_of("role", UserRole),)


class ApiToken(Base):
    """An API token; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[User] = relationship(back_populates="tokens")


__all__ = [
    "NAMING_CONVENTION",
    "ApiToken",
    "AuditEvent",
    "Base",
    "Baseline",
    "BaselineContribution",
    "Call",
    "CallStatus",
    "ContributionSource",
    "Flag",
    "FlagLabel",
    "FlagLevel",
    "FlagStatus",
    "JSONType",
    "Patient",
    "PopulationStats",
    "Score",
    "StreamStatus",
    "StreamToken",
    "UTCDateTime",
    "User",
    "UserRole",
    "Utterance",
    "UtteranceAudio",
    "UtteranceStatus",
    "Verdict",
    "Voiceprint",
    "utcnow",
]
