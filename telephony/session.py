"""Per-stream state: messages in, persisted utterances and queued jobs out.

:class:`StreamSession` holds everything one Media Stream needs (protocol state, jitter buffer,
segmenter, the call it belongs to) and knows nothing about sockets, so tests and benchmarks drive
it directly with message strings. The socket handler only moves frames into :meth:`receive` and
turns a :class:`~telephony.messages.ProtocolError` into a close frame.

It does no ML and never waits on a worker: each utterance is committed together with its audio,
then its scoring job is enqueued by id. If Redis is down the utterance stays ``pending`` for the
outbox sweep; if the database is down mid-call the utterance is dropped and counted, and the call
carries on (the stream must keep being read or Twilio discards audio).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from schema.db import session_scope
from schema.models import Call, CallStatus, Utterance, UtteranceAudio, UtteranceStatus
from telephony import tokens
from telephony.jitter import JitterBuffer, TimestampJump
from telephony.messages import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    Connected,
    Dtmf,
    Mark,
    Media,
    Message,
    ProtocolError,
    Start,
    Stop,
    parse_message,
)
from telephony.outbox import JobOptions, enqueue_finalise_call, enqueue_score_utterance
from telephony.twiml import TOKEN_PARAMETER
from telephony.vad import SegmentedUtterance, UtteranceSegmenter, VadConfig

log = logging.getLogger(__name__)


class StreamState(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    ENDED = "ended"


@dataclass(frozen=True)
class StreamConfig:
    """What a stream needs from the deployment's settings."""

    hmac_key: str
    vad: VadConfig = field(default_factory=VadConfig)
    jobs: JobOptions = field(default_factory=JobOptions)
    jitter_window_ms: int = 200
    max_gap_ms: int = 60_000
    max_stream_s: int = 4 * 3600  # longer than any hotline call; beyond it the stream is closed
    # after a failed enqueue, leave jobs to the outbox sweep for this long instead of blocking the
    # socket on every utterance while Redis is down (Twilio drops audio from a slow reader)
    enqueue_cooldown_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: object) -> StreamConfig:
        return cls(
            hmac_key=getattr(settings, "hmac_key", ""),
            vad=VadConfig(aggressiveness=int(getattr(settings, "vad_aggressiveness", 2))),
            jobs=JobOptions.from_settings(settings),
        )


@dataclass
class StreamCounters:
    messages: int = 0
    media: int = 0
    ignored_tracks: int = 0
    utterances_saved: int = 0
    utterances_lost: int = 0  # database unavailable when the utterance ended
    jobs_deferred: int = 0  # saved but not enqueued: left to the outbox sweep


def _now() -> datetime:
    return datetime.now(UTC)


class StreamSession:
    """One Twilio Media Stream, from ``connected`` to ``stop`` (or a dropped socket)."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        queue: Queue | None,
        config: StreamConfig,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._config = config
        self._clock = clock
        self.state = StreamState.AWAITING_START
        self.call_id: int | None = None
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self._seq_base = 0
        self.jitter = JitterBuffer(window_ms=config.jitter_window_ms, max_gap_ms=config.max_gap_ms)
        self.segmenter = UtteranceSegmenter(config.vad)
        self.counters = StreamCounters()
        self.utterance_ids: list[int] = []
        self._enqueue_paused_until = 0.0

    @property
    def ended(self) -> bool:
        return self.state is StreamState.ENDED

    def receive(self, raw: str | bytes) -> None:
        """Parse and handle one WebSocket frame. Raises :class:`ProtocolError` to close the stream."""
        self.handle(parse_message(raw))

    def handle(self, message: Message) -> None:
        if self.state is StreamState.ENDED:
            raise ProtocolError("message after stop", CLOSE_POLICY_VIOLATION)
        self.counters.messages += 1
        if isinstance(message, Connected):
            if self.state is not StreamState.AWAITING_START:
                raise ProtocolError("connected after start", CLOSE_POLICY_VIOLATION)
        elif isinstance(message, Start):
            self._start(message)
        elif isinstance(message, Media):
            self._media(message)
        elif isinstance(message, Stop):
            self._require_stream(message.stream_sid)
            if message.call_sid != self.call_sid:
                raise ProtocolError("stop for another call", CLOSE_POLICY_VIOLATION)
            self.finish()
        elif isinstance(message, Mark | Dtmf):
            # bidirectional-only events; harmless if they ever arrive
            self._require_stream(message.stream_sid)

    def finish(self) -> None:
        """Stream over (stop, socket dropped or closed for a protocol error). Idempotent.

        Flushes jitter buffer and segmenter so the last words are kept, marks the call ended and
        enqueues its finalisation.
        """
        if self.state is StreamState.ENDED:
            return
        started = self.state is StreamState.STREAMING
        self.state = StreamState.ENDED
        if not started or self.call_id is None:
            return
        for frame in self.jitter.flush():
            self._utterances(self.segmenter.push(frame.timestamp_ms, frame.data))
        self._utterances(self.segmenter.flush())
        try:
            with session_scope(self._sessions) as session:
                call = session.get(Call, self.call_id)
                if call is not None and call.status == CallStatus.STREAMING.value:
                    call.status = CallStatus.ENDED.value
                    call.ended_at = self._clock()
        except SQLAlchemyError as exc:
            log.error("call %s: could not mark ended (%s)", self.call_id, type(exc).__name__)
            return
        if not self._enqueue(enqueue_finalise_call, self.call_id):
            self.counters.jobs_deferred += 1
        stats = self.jitter.stats
        log.info(
            "call %s stream ended: %d utterances saved, %d lost, %d deferred; jitter in=%d dup=%d late=%d "
            "gap_ms=%d",
            self.call_id, self.counters.utterances_saved, self.counters.utterances_lost,
            self.counters.jobs_deferred, stats.frames_in, stats.duplicates, stats.late, stats.gap_ms_filled,
        )

    # -- message handlers ------------------------------------------------------------------------

    def _require_stream(self, stream_sid: str) -> None:
        if self.state is not StreamState.STREAMING:
            raise ProtocolError("stream not started", CLOSE_POLICY_VIOLATION)
        if stream_sid != self.stream_sid:
            raise ProtocolError("message for another stream", CLOSE_POLICY_VIOLATION)

    def _start(self, start: Start) -> None:
        if self.state is not StreamState.AWAITING_START:
            raise ProtocolError("second start message", CLOSE_POLICY_VIOLATION)
        token = start.custom_parameters.get(TOKEN_PARAMETER)
        if not token:
            raise ProtocolError("missing stream token", CLOSE_POLICY_VIOLATION)
        now = self._clock()
        try:
            nonce = tokens.verify(token, start.call_sid, self._config.hmac_key, now)
        except tokens.TokenError as exc:
            raise ProtocolError(str(exc), CLOSE_POLICY_VIOLATION) from None
        try:
            with session_scope(self._sessions) as session:
                if not tokens.consume(session, nonce, start.call_sid, now):
                    raise ProtocolError("stream token already used", CLOSE_POLICY_VIOLATION)
                call = session.scalars(select(Call).where(Call.call_sid == start.call_sid)).one_or_none()
                if call is None:
                    raise ProtocolError("unknown call", CLOSE_POLICY_VIOLATION)
                call.stream_sid = start.stream_sid
                if call.status != CallStatus.STREAMING.value:
                    call.status = CallStatus.STREAMING.value
                    call.ended_at = None
                last_seq = session.scalar(select(func.max(Utterance.seq)).where(Utterance.call_id == call.id))
                call_id = call.id
        except SQLAlchemyError as exc:
            log.error("stream start: database unavailable (%s)", type(exc).__name__)
            raise ProtocolError("database unavailable", CLOSE_INTERNAL_ERROR) from None
        # a call can have had an earlier stream (the hotline's flow came back to painline)
        self._seq_base = 0 if last_seq is None else last_seq + 1
        self.call_id = call_id
        self.call_sid = start.call_sid
        self.stream_sid = start.stream_sid
        self.state = StreamState.STREAMING
        log.info("call %s stream started", call_id)

    def _media(self, media: Media) -> None:
        self._require_stream(media.stream_sid)
        self.counters.media += 1
        if media.track != "inbound":
            self.counters.ignored_tracks += 1
            return
        if media.timestamp_ms > self._config.max_stream_s * 1000:
            raise ProtocolError("stream longer than allowed", CLOSE_POLICY_VIOLATION)
        try:
            frames = self.jitter.push(media.timestamp_ms, media.payload)
        except TimestampJump as exc:
            raise ProtocolError(str(exc), CLOSE_POLICY_VIOLATION) from None
        for frame in frames:
            self._utterances(self.segmenter.push(frame.timestamp_ms, frame.data))

    # -- persistence -------------------------------------------------------------------------------

    def _utterances(self, utterances: list[SegmentedUtterance]) -> None:
        if self.call_id is None:
            return
        for utterance in utterances:
            utterance_id = self._persist(self.call_id, utterance)
            if utterance_id is None:
                continue
            if not self._enqueue(enqueue_score_utterance, utterance_id):
                self.counters.jobs_deferred += 1

    def _enqueue(self, enqueue: Callable[[Queue | None, int, JobOptions], bool], object_id: int) -> bool:
        """Enqueue unless Redis failed recently; the row stays in the outbox either way."""
        if time.monotonic() < self._enqueue_paused_until:
            return False
        if enqueue(self._queue, object_id, self._config.jobs):
            return True
        self._enqueue_paused_until = time.monotonic() + self._config.enqueue_cooldown_s
        return False

    def _persist(self, call_id: int, utterance: SegmentedUtterance) -> int | None:
        """Utterance and its audio in one transaction; None if the database refused."""
        try:
            with session_scope(self._sessions) as session:
                row = Utterance(
                    call_id=call_id,
                    seq=self._seq_base + utterance.seq,
                    start_ms=utterance.start_ms,
                    end_ms=utterance.end_ms,
                    speech_s=utterance.speech_s,
                    status=UtteranceStatus.PENDING.value,
                )
                session.add(row)
                session.flush()
                session.add(UtteranceAudio(utterance_id=row.id, mulaw=utterance.mulaw))
                utterance_id = row.id
        except SQLAlchemyError as exc:
            self.counters.utterances_lost += 1
            log.error("call %s: utterance not saved (%s)", call_id, type(exc).__name__)
            return None
        self.counters.utterances_saved += 1
        self.utterance_ids.append(utterance_id)
        return utterance_id
