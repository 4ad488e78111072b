"""painline.replay: Twilio's message formats, signatures, and whole calls through the real server."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis import Redis
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from analysis.channel import TELEPHONE_RATE, mulaw_decode, mulaw_encode
from analysis.segmentation import CALL_GAP_S, VadConfig, cut_clip
from painline.call_report import format_report, read_report
from painline.config import Settings
from painline.replay import (
    CHUNK_BYTES,
    ReplayError,
    StreamMessages,
    chunks,
    connect_url,
    load_call_audio,
    parse_twiml,
    replay_call,
    stream_status_params,
    voice_webhook_params,
)
from painline.workers import PainlineSimpleWorker, build_context
from schema.identity import patient_ref_key
from schema.models import (
    AuditEvent,
    Call,
    CallStatus,
    Patient,
    Score,
    StreamStatus,
    Utterance,
    UtteranceAudio,
    UtteranceStatus,
    Verdict,
)
from telephony.messages import Connected, Media, Start, Stop, parse_message
from telephony.signatures import is_valid
from telephony.twiml import NextStep, continue_only, stream_response
from tests.app_fixtures import AUTH_TOKEN, PROXY_PUBLIC_URL, AppServer, wav_file
from tests.e2e_fixtures import call_audio, installed
from tests.worker_fixtures import calm, pain
from worker.context import WorkerContext

# ---------------------------------------------------------------------------------------------------
# message formats (checked against Twilio's documented shapes and against painline's own parser)


def test_messages_follow_twilios_documented_format() -> None:
    builder = StreamMessages(account_sid="AC" + "a" * 32, call_sid="CA" + "b" * 32, stream_sid="MZ" + "c" * 32)
    connected = builder.connected()
    start = builder.start({"token": "t0k"})
    first = builder.media(b"\x01" * CHUNK_BYTES, 0)
    second = builder.media(b"\x02" * CHUNK_BYTES, 20)
    stop = builder.stop()

    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1"
    assert start["streamSid"] == "MZ" + "c" * 32
    assert start["start"] == {
        "accountSid": "AC" + "a" * 32,
        "streamSid": "MZ" + "c" * 32,
        "callSid": "CA" + "b" * 32,
        "tracks": ["inbound"],
        "customParameters": {"token": "t0k"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }

    # numbers as strings, as Twilio sends them; sequence counts messages, chunk counts media
    def numbers(m: dict) -> tuple:
        return m["sequenceNumber"], m["media"]["chunk"], m["media"]["timestamp"]

    assert numbers(first) == ("2", "1", "0")
    assert numbers(second) == ("3", "2", "20")
    media = first["media"]
    assert isinstance(media, dict)
    assert media["track"] == "inbound"
    assert base64.b64decode(media["payload"]) == b"\x01" * CHUNK_BYTES
    assert stop == {
        "event": "stop",
        "sequenceNumber": "4",
        "stop": {"accountSid": "AC" + "a" * 32, "callSid": "CA" + "b" * 32},
        "streamSid": "MZ" + "c" * 32,
    }

    parsed = [parse_message(json.dumps(m)) for m in (connected, start, first, second, stop)]
    assert isinstance(parsed[0], Connected)
    assert isinstance(parsed[1], Start) and parsed[1].custom_parameters == {"token": "t0k"}
    assert isinstance(parsed[2], Media) and parsed[2].payload == b"\x01" * CHUNK_BYTES
    assert isinstance(parsed[3], Media) and parsed[3].timestamp_ms == 20
    assert isinstance(parsed[4], Stop) and parsed[4].call_sid == "CA" + "b" * 32


def test_sids_look_like_twilios() -> None:
    builder = StreamMessages(account_sid="AC" + "0" * 32, call_sid="CA" + "1" * 32)
    assert builder.stream_sid.startswith("MZ") and len(builder.stream_sid) == 34
    int(builder.stream_sid[2:], 16)  # 32 hex digits


def test_voice_webhook_form_is_signed_as_twilio_signs_it() -> None:
    params = voice_webhook_params("AC" + "1" * 32, "CA" + "2" * 32, "+15551234567", "+15557654321")
    for field in ("AccountSid", "CallSid", "From", "To", "CallStatus", "Direction", "ApiVersion", "Caller", "Called"):
        assert params[field]
    assert params["CallStatus"] == "ringing" and params["Direction"] == "inbound"
    assert params["ApiVersion"] == "2010-04-01"
    url = "https://painline.example/twilio/voice?patient_ref=P-1"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    assert is_valid(AUTH_TOKEN, url, params, signature)
    elsewhere = "https://elsewhere.example/twilio/voice?patient_ref=P-1"
    assert not is_valid(AUTH_TOKEN, elsewhere, params, signature)


def test_status_callback_fields() -> None:
    params = stream_status_params("AC1", "CA1", "MZ1", "stream-started")
    assert params["StreamEvent"] == "stream-started"
    assert params["StreamName"] == "MZ1"  # an unnamed stream is reported under its SID
    assert params["Timestamp"].endswith("Z")


def test_parse_twiml_reads_the_stream_and_its_parameters() -> None:
    body = stream_response(
        stream_url="wss://painline.example/twilio/stream",
        status_callback_url="https://painline.example/twilio/stream-status",
        token="v1.tok",
        next_step=NextStep(enqueue="nurses"),
        consent_message="notice",
        patient_ref="P-7",
    )
    instruction = parse_twiml(body)
    assert instruction.url == "wss://painline.example/twilio/stream"
    assert instruction.parameters == {"token": "v1.tok", "patient_ref": "P-7"}
    assert instruction.status_callback == "https://painline.example/twilio/stream-status"
    assert instruction.track == "inbound_track"


def test_parse_twiml_without_a_stream_is_an_error() -> None:
    with pytest.raises(ReplayError, match="without <Start><Stream>"):
        parse_twiml(continue_only(NextStep(enqueue="nurses")))
    with pytest.raises(ReplayError, match="did not return XML"):
        parse_twiml("<html>")


def test_connect_url_keeps_the_path_and_targets_the_reached_host() -> None:
    assert (
        connect_url("ws://127.0.0.1:9000/twilio/stream", "http://127.0.0.1:9000") == "ws://127.0.0.1:9000/twilio/stream"
    )
    assert (
        connect_url("wss://painline.example/twilio/stream", "http://127.0.0.1:9000")
        == "ws://127.0.0.1:9000/twilio/stream"
    )
    assert (
        connect_url("wss://painline.example/base/twilio/stream", "https://lb.internal:8443")
        == "wss://lb.internal:8443/base/twilio/stream"
    )


def test_chunks_are_160_bytes_and_the_tail_is_padded_with_silence() -> None:
    pieces = chunks(b"\x00" * 330)
    assert [len(p) for p in pieces] == [160, 160, 160]
    assert pieces[-1][10:] == b"\xff" * 150


def test_load_call_audio_resamples_any_rate_to_the_telephone_channel(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    path = wav_file(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate=16000)
    mulaw = load_call_audio(path)
    assert len(mulaw) == 8000  # one second at 8 kHz, one byte per sample
    decoded = mulaw_decode(mulaw)
    assert 0.3 < float(np.max(np.abs(decoded))) < 0.6


# ---------------------------------------------------------------------------------------------------
# against the real server (create_app on PostgreSQL and Redis, werkzeug on a free port)


def test_replay_streams_a_call_into_the_server(app_server: AppServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    audio = call_audio(calm(140.0, seed=1), pain(140.0, seed=2), pain(140.0, seed=3))
    result = replay_call(
        audio,
        base_url=app_server.url,
        public_url=app_server.url,
        auth_token=AUTH_TOKEN,
        patient_ref="P-replay-1",
        speed=0,
        record_messages=True,
    )

    # what went over the socket is exactly the documented sequence
    events = [m["event"] for m in result.sent]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    assert events.count("media") == result.media_messages == -(-len(audio) // CHUNK_BYTES)
    start = result.sent[1]["start"]
    assert isinstance(start, dict) and set(start["customParameters"]) == {"token", "patient_ref"}
    assert result.close_code == 1000  # the server closed normally after stop

    sessions = app_server.app.extensions["painline.sessions"]
    with sessions() as session:
        call = session.scalars(select(Call).where(Call.call_sid == result.call_sid)).one()
        assert call.stream_sid == result.stream_sid
        assert call.status == CallStatus.ENDED.value
        assert call.stream_status == StreamStatus.STOPPED.value  # the status callbacks arrived, signed
        patient = session.get(Patient, call.patient_id)
        assert patient is not None and patient.key == patient_ref_key("P-replay-1")
        utterances = session.scalars(select(Utterance).where(Utterance.call_id == call.id)).all()
        assert len(utterances) >= 2
        assert all(u.status == UtteranceStatus.PENDING.value for u in utterances)
        for u in utterances:
            assert session.get(UtteranceAudio, u.id) is not None
        utterance_ids = sorted(u.id for u in utterances)
        call_id = call.id
        # the caller's number is nowhere: not in the patient key, not in the audit trail
        audit = session.scalars(select(AuditEvent)).all()
        assert "5551234567" not in json.dumps([a.detail for a in audit])
    # and neither the number nor the patient reference reached any log line (access logs included)
    assert "POST /twilio/voice" in caplog.text
    assert "P-replay-1" not in caplog.text and "5551234567" not in caplog.text

    queue = app_server.queue
    jobs = [queue.fetch_job(job_id) for job_id in queue.job_ids]
    by_id = {job.id: job for job in jobs if job is not None}
    assert set(by_id) == {f"score-utterance-{i}" for i in utterance_ids} | {f"finalise-call-{call_id}"}
    for job in by_id.values():
        # ids only: nothing about the caller or their audio ever sits in Redis
        assert len(job.args) == 1 and isinstance(job.args[0], int)
        assert job.kwargs == {}
        assert job.func_name in ("worker.jobs.score_utterance", "worker.jobs.finalise_call")


def test_replay_behind_a_proxy_signs_the_public_url_and_reaches_the_local_one(
    proxied_app_server: AppServer,
) -> None:
    audio = call_audio(calm(150.0, seed=4))
    result = replay_call(
        audio, base_url=proxied_app_server.url, public_url=PROXY_PUBLIC_URL, auth_token=AUTH_TOKEN, speed=0
    )
    assert result.stream.url == "wss://painline.example/twilio/stream"
    assert result.close_code == 1000
    with proxied_app_server.app.extensions["painline.sessions"]() as session:
        call = session.scalars(select(Call).where(Call.call_sid == result.call_sid)).one()
        assert call.status == CallStatus.ENDED.value
        assert session.scalars(select(Utterance).where(Utterance.call_id == call.id)).first() is not None


def test_replay_signed_for_another_url_is_refused(proxied_app_server: AppServer) -> None:
    with pytest.raises(ReplayError, match="403"):
        replay_call(
            call_audio(calm()),
            base_url=proxied_app_server.url,
            public_url=proxied_app_server.url,
            auth_token=AUTH_TOKEN,
            speed=0,
        )


def test_replay_with_the_wrong_token_is_refused(app_server: AppServer) -> None:
    with pytest.raises(ReplayError, match="refused the signature"):
        replay_call(
            call_audio(calm()), base_url=app_server.url, public_url=app_server.url, auth_token="not-the-token", speed=0
        )
    with app_server.app.extensions["painline.sessions"]() as session:
        assert session.scalars(select(Call)).first() is None


def test_real_time_pacing_takes_as_long_as_the_audio(app_server: AppServer) -> None:
    audio = call_audio(calm(seconds=0.6), gap_s=0.2)  # one second
    result = replay_call(
        audio,
        base_url=app_server.url,
        public_url=app_server.url,
        auth_token=AUTH_TOKEN,
        speed=1.0,
        status_callbacks=False,
    )
    assert result.audio_s == pytest.approx(1.0, abs=0.03)
    assert result.elapsed_s >= 0.95


# ---------------------------------------------------------------------------------------------------
# the whole call: replay, then a real RQ worker with the worker context


LOW_THRESHOLD = 0.005
"""The toy test model (trained on clean synthetic clips) is timid on VAD-cut, mu-law audio; a low
flag threshold, passed through the settings, keeps the verdicts of this test unambiguous."""


@pytest.fixture
def installed_context(app_settings: Settings, pain_model_path: Path, worker_redis: Redis) -> Iterator[WorkerContext]:
    settings = app_settings.with_(model_path=pain_model_path, flag_threshold=LOW_THRESHOLD)
    with installed(build_context(settings, worker_redis, speaker=False)) as ctx:
        yield ctx


def test_whole_calls_are_scored_and_finalised_by_a_real_worker(
    app_server: AppServer, installed_context: WorkerContext
) -> None:
    assert installed_context.threshold == LOW_THRESHOLD
    replayed: dict[str, str] = {}
    for kind, make in (("calm", calm), ("pain", pain)):
        audio = call_audio(make(130.0, seed=11), make(130.0, seed=12), make(130.0, seed=13))
        replayed[kind] = replay_call(
            audio, base_url=app_server.url, public_url=app_server.url, auth_token=AUTH_TOKEN, speed=0
        ).call_sid
    queue = app_server.queue
    worker = PainlineSimpleWorker([queue], connection=queue.connection, job_class=queue.job_class)
    assert worker.work(burst=True, logging_level="WARNING")
    assert queue.count == 0 and queue.failed_job_registry.count == 0

    sessions = app_server.app.extensions["painline.sessions"]
    reports = {kind: read_report(sessions, sid) for kind, sid in replayed.items()}
    for report in reports.values():
        assert report is not None
        assert report.status == CallStatus.FINALISED.value
        assert len(report.utterances) >= 2
        assert all(u.status == UtteranceStatus.SCORED.value and u.probability is not None for u in report.utterances)
    calm_report, pain_report = reports["calm"], reports["pain"]
    assert calm_report is not None and pain_report is not None
    assert pain_report.call_score is not None and calm_report.call_score is not None
    assert pain_report.call_score > calm_report.call_score
    assert pain_report.verdict == Verdict.PAIN_LIKELY.value and pain_report.flag_level is not None
    assert calm_report.verdict == Verdict.NO_PAIN.value and calm_report.flag_level is None
    with sessions() as session:
        assert session.scalars(select(UtteranceAudio)).first() is None  # audio deleted once scored
        n_utterances = len(calm_report.utterances) + len(pain_report.utterances)
        assert len(session.scalars(select(Score)).all()) == n_utterances
    text = format_report(pain_report)
    assert "PAIN LIKELY" in text and f"call {pain_report.call_id}" in text


def test_enrolment_cuts_a_clip_exactly_as_a_replayed_call_does(app_server: AppServer) -> None:
    """One segmentation everywhere: the utterances ``cut_clip`` gives enrolment are, byte for byte, the
    ones the socket stores when the same clip is spoken between pauses on a call."""
    clip = np.concatenate([calm(120.0, seed=31), np.zeros(TELEPHONE_RATE // 2), pain(150.0, seed=32)])
    gap = np.zeros(round(CALL_GAP_S * TELEPHONE_RATE), dtype=np.float32)
    result = replay_call(
        mulaw_encode(np.concatenate([gap, clip, gap])),
        base_url=app_server.url,
        public_url=app_server.url,
        auth_token=AUTH_TOKEN,
        speed=0,
    )
    sessions = app_server.app.extensions["painline.sessions"]
    with sessions() as session:
        call = session.scalars(select(Call).where(Call.call_sid == result.call_sid)).one()
        stored = session.execute(
            select(Utterance.start_ms, Utterance.end_ms, UtteranceAudio.mulaw)
            .join(UtteranceAudio, UtteranceAudio.utterance_id == Utterance.id)
            .where(Utterance.call_id == call.id)
            .order_by(Utterance.seq)
        ).all()
    cut = cut_clip(clip, VadConfig(aggressiveness=app_server.settings.vad_aggressiveness))
    assert len(cut) >= 2
    assert [(u.start_ms, u.end_ms, u.mulaw) for u in cut] == [(s, e, bytes(m)) for s, e, m in stored]
