"""Per-stream state: messages in, persisted utterances and queued jobs out.

:class:`StreamSession` holds everything one Media Stream needs (protocol state, jitter buffer,
segmenter, the call it belongs to) and knows nothing about sockets, so tests and benchmarks drive
it directly with message strings. The socket handler only moves frames into :meth:`receive` and
turns a :class:`~telephony.messages.ProtocolError` into a close frame.

It does no ML and never waits on a worker: each utterance is committed together with its audio,
then its scoring job is enqueued by id. If Redis is down the utterance stays ``pending`` for the
outbox sweep; if the database is down mid-call the utterance waits in memory and is saved once the
database answers again (retried every few seconds, and for up to a minute after the stream ends),
while the call carries on (the stream must keep being read or Twilio discards audio). That holding
and retrying is :class:`~telephony.saving.OutageTolerantSaver`'s; this module keeps the protocol and
says only how one utterance is written.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rq import Queue
from sqlalchemy import func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from analysis.segmentation import SegmentedUtterance, UtteranceSegmenter, VadConfig
from schema.contract import JobOptions, LiveEvent, announce_call
from schema.db import session_scope
from schema.models import Call, CallStatus, Utterance, UtteranceAudio, UtteranceStatus
from schema.outbox import enqueue_finalise_call, enqueue_score_utterance
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
from telephony.metrics import STREAMS
from telephony.saving import FinishOutcome, OutageTolerantSaver, SavingPolicy
from telephony.stream_stats import StreamStats, log_stream_end
from telephony.twiml import TOKEN_PARAMETER

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
    # messages that bring no new audio (duplicates, late or empty chunks, ignored tracks, marks): a
    # burst of this many is tolerated, beyond it only a real-time rate (see StreamSession._check_flood)
    flood_burst_messages: int = 1000
    flood_messages_per_s: float = 150.0
    # database outages: utterances wait in memory (oldest dropped beyond the cap, about 10 minutes
    # of speech), saving is retried at most this often while the call streams, and at the end of the
    # stream for up to finish_retry_s, so a 30 s outage loses nothing
    max_unsaved_utterances: int = 120
    save_retry_s: float = 2.0
    finish_retry_s: float = 60.0
    finish_retry_interval_s: float = 1.0
    # pub/sub channel the stream's start and end are announced on (schema.contract.call_channel of the
    # deployment); empty announces nothing (tools and tests that drive a session without a dashboard)
    call_channel: str = ""

    @property
    def saving(self) -> SavingPolicy:
        """The database-outage fields above, as the saver's policy (kept flat here: settings set them)."""
        return SavingPolicy(
            max_waiting=self.max_unsaved_utterances,
            retry_s=self.save_retry_s,
            finish_retry_s=self.finish_retry_s,
            finish_retry_interval_s=self.finish_retry_interval_s,
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
        save_inline: bool = True,
    ) -> None:
        """``save_inline=False`` leaves ended utterances in :attr:`save_due` for :meth:`save_ready`.

        A threaded server saves inline, in the socket's own thread. An event loop must not wait on
        the database, so :mod:`telephony.stream_server` asks the session to hold them and runs
        :meth:`save_ready` (and ``start``, ``stop`` and :meth:`finish`, which touch the database
        too) in a thread pool; media frames are handled on the loop itself.
        """
        self._save_inline = save_inline
        self._ready: list[SegmentedUtterance] = []
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
        self.stats = StreamStats()  # frames received and per-frame handling lag, logged at the end
        self.utterance_ids: list[int] = []
        self._enqueue_paused_until = 0.0
        # utterances on their way to the database, held through outages; made at start, with the call
        self._saver: OutageTolerantSaver[SegmentedUtterance] | None = None
        self._streaming_since: float | None = None  # time.monotonic() at start, for the flood check
        STREAMS.opened(self)

    @property
    def ended(self) -> bool:
        return self.state is StreamState.ENDED

    @property
    def save_due(self) -> bool:
        """Utterances have ended and wait for :meth:`save_ready` (only when not saving inline)."""
        return bool(self._ready)

    def save_ready(self) -> None:
        """Save (or hold, through a database outage) the utterances that have ended, in order."""
        if self._saver is None or not self._ready:
            return
        ready, self._ready = self._ready, []
        self.counters.utterances_lost += self._saver.add(ready)

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
            if self.counters.messages > 1:
                # Twilio sends it once; repeating it would hold a socket open without ever showing a token
                raise ProtocolError("connected repeated", CLOSE_POLICY_VIOLATION)
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
        self._check_flood()

    def finish(self) -> None:
        """Stream over (stop, socket dropped or closed for a protocol error). Idempotent.

        Flushes jitter buffer and segmenter so the last words are kept, marks the call ended and
        enqueues its finalisation.
        """
        if self.state is StreamState.ENDED:
            return
        try:
            self._finish()
        finally:
            STREAMS.closed(self)  # its counts move to the process totals /metrics reports

    def _finish(self) -> None:
        started = self.state is StreamState.STREAMING
        self.state = StreamState.ENDED
        if not started or self.call_id is None or self._saver is None:
            return
        for frame in self.jitter.flush():
            self._utterances(self.segmenter.push(frame.timestamp_ms, frame.data))
        self._utterances(self.segmenter.flush())
        self.save_ready()  # finish runs where the database may be waited on, whoever saves the rest
        # the socket is done, so waiting here costs no audio: ride out a short database outage
        result = self._saver.finish(self._mark_ended)
        self.counters.utterances_lost += result.given_up
        if result.outcome is FinishOutcome.CLOSE_FAILED:  # the sweep ends and finalises calls left streaming
            self._log_stats()
            return
        self._announce(LiveEvent.CALL_ENDED)
        if not self._enqueue(enqueue_finalise_call, self.call_id):
            self.counters.jobs_deferred += 1
        stats = self.jitter.stats
        log.info(
            "call %s stream ended: %d utterances saved, %d lost, %d deferred; jitter in=%d dup=%d late=%d gap_ms=%d",
            self.call_id,
            self.counters.utterances_saved,
            self.counters.utterances_lost,
            self.counters.jobs_deferred,
            stats.frames_in,
            stats.duplicates,
            stats.late,
            stats.gap_ms_filled,
        )
        self._log_stats()

    def _log_stats(self) -> None:
        """The one structured stats line of this stream (telephony.stream_stats)."""
        assert self.call_id is not None
        jitter = self.jitter.stats
        log_stream_end(
            self.call_id,
            self.stats,
            late=jitter.late,
            duplicates=jitter.duplicates,
            gap_ms_filled=jitter.gap_ms_filled,
            utterances_saved=self.counters.utterances_saved,
            utterances_lost=self.counters.utterances_lost,
            jobs_deferred=self.counters.jobs_deferred,
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
        self._saver = OutageTolerantSaver(
            self._save,
            self._saved,
            self._config.saving,
            label=f"call {call_id}",
            noun="utterance",
        )
        self.call_sid = start.call_sid
        self.stream_sid = start.stream_sid
        self.state = StreamState.STREAMING
        self._streaming_since = time.monotonic()
        log.info("call %s stream started", call_id)
        self._announce(LiveEvent.CALL_STARTED)

    def _check_flood(self) -> None:
        """Close a stream whose messages carry no new audio faster than any real call could send them.

        Audio faster than real time is accepted (replays send it as fast as the socket takes it, and
        ``max_stream_s`` bounds it), but duplicates, late or empty chunks, ignored tracks and marks cost
        work without moving the stream on, and could keep a socket busy forever. Twilio sends at most
        one such message per inbound frame (the outbound track, 50 per second), so beyond a burst
        allowance they may only arrive at ``flood_messages_per_s``.
        """
        if self._streaming_since is None or self.state is not StreamState.STREAMING:
            return
        jitter = self.jitter.stats
        idle = (
            self.counters.messages
            - self.counters.media
            + self.counters.ignored_tracks
            + jitter.duplicates
            + jitter.late
            + jitter.empty
        )
        burst = self._config.flood_burst_messages
        if idle <= burst:
            return  # the common case, without a clock read
        elapsed_s = time.monotonic() - self._streaming_since
        if idle > burst + self._config.flood_messages_per_s * elapsed_s:
            raise ProtocolError("message flood", CLOSE_POLICY_VIOLATION)

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
        self.stats.frame_handled(media.timestamp_ms)

    # -- persistence -------------------------------------------------------------------------------

    def _mark_ended(self) -> str | None:
        """Mark the call ended; the error's name if the database refused."""
        try:
            with session_scope(self._sessions) as session:
                call = session.get(Call, self.call_id)
                if call is not None and call.status == CallStatus.STREAMING.value:
                    call.status = CallStatus.ENDED.value
                    call.ended_at = self._clock()
        except SQLAlchemyError as exc:
            log.warning("call %s: could not mark ended yet (%s)", self.call_id, type(exc).__name__)
            return type(exc).__name__
        return None

    def _utterances(self, utterances: list[SegmentedUtterance]) -> None:
        """Queue ended utterances for the saver (which holds them through a database outage)."""
        if self._saver is None or not utterances:
            return
        self._ready.extend(utterances)
        if self._save_inline:
            self.save_ready()

    def _save(self, utterance: SegmentedUtterance) -> int | None:
        """The saver's ``save``: one utterance into this stream's call; None if the database refused."""
        assert self.call_id is not None  # the saver is made at start, once the call is known
        return self._persist(self.call_id, utterance)

    def _saved(self, utterance_id: int) -> None:
        """The saver's ``on_saved``: queue the committed utterance for scoring (or leave it to the sweep)."""
        if not self._enqueue(enqueue_score_utterance, utterance_id):
            self.counters.jobs_deferred += 1

    def _announce(self, event: LiveEvent) -> None:
        """Tell open dashboards the stream started or ended (best effort, after the row is committed).

        Uses the queue's Redis connection and honours the same cooldown as enqueues: while Redis is
        failing, a publish would stall the socket's thread for its timeout on every call.
        """
        if not self._config.call_channel or self._queue is None or self.call_id is None:
            return
        if time.monotonic() < self._enqueue_paused_until:
            return
        if not announce_call(self._queue.connection, self._config.call_channel, event, self.call_id):
            self._enqueue_paused_until = time.monotonic() + self._config.enqueue_cooldown_s

    def _enqueue(self, enqueue: Callable[[Queue | None, int, JobOptions], bool], object_id: int) -> bool:
        """Enqueue unless Redis failed recently; the row stays in the outbox either way."""
        if time.monotonic() < self._enqueue_paused_until:
            return False
        if enqueue(self._queue, object_id, self._config.jobs):
            return True
        self._enqueue_paused_until = time.monotonic() + self._config.enqueue_cooldown_s
        return False

    def _persist(self, call_id: int, utterance: SegmentedUtterance) -> int | None:
        """Utterance and its audio in one transaction; None if the database refused.

        Two plain INSERTs on the session's connection rather than ORM objects or ``Session.execute``:
        this runs about once a second per call, and both the unit of work and the ORM's bulk-insert
        path cost more CPU than the database round trips (``docs/stream.md``, profile).
        """
        try:
            with session_scope(self._sessions) as session:
                connection = session.connection()
                utterance_id = connection.execute(
                    insert(Utterance)
                    .values(
                        call_id=call_id,
                        seq=self._seq_base + utterance.seq,
                        start_ms=utterance.start_ms,
                        end_ms=utterance.end_ms,
                        speech_s=utterance.speech_s,
                        status=UtteranceStatus.PENDING.value,
                    )
                    .returning(Utterance.id)
                ).scalar_one()
                connection.execute(insert(UtteranceAudio).values(utterance_id=utterance_id, mulaw=utterance.mulaw))
        except SQLAlchemyError as exc:
            log.warning("call %s: utterance not saved yet (%s); kept in memory", call_id, type(exc).__name__)
            return None
        self.counters.utterances_saved += 1
        self.utterance_ids.append(utterance_id)
        return utterance_id
