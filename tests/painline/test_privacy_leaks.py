"""Privacy inspection: drive whole calls, the worker and the dashboard, then search everything they left.

One test runs the product the way a hotline does, with values nobody else uses so a hit cannot be a
coincidence: a caller number (``+15550001234``), a hotline patient reference, two staff usernames
and audio synthesised for this test alone. Two calls come in through the signed webhook and the
Media Stream socket (painline.replay, as Twilio sends them: number in ``From``/``Caller``, reference
in the webhook's query string); a real RQ worker scores, finalises and flags them; a nurse signs in
over real HTTP, opens the queue and the call and acknowledges and resolves the flag (which enqueues
baseline growth); an admin searches for the patient by reference, opens the baseline, uploads an
enrolment recording and reads the audit log; the JSON API is read with bearer tokens; the worker
runs again. Then:

- every log record from every logger at DEBUG (the web server's access log included, since the
  server runs in this process) and everything written to the process's stdout/stderr;
- every Redis key this run created, and every value under it: strings, hashes, lists, sets, sorted
  sets; RQ job hashes are opened with RQ's own serializer so the job's function, args, kwargs and
  description are read as RQ reads them (job ids are keys, so they are searched too);
- every message published on the flag channels;
- every URL the pages link to or redirect to

must hold none of: the number in any spelling (E.164, bare digits, with separators, URL-encoded),
the patient reference, a staff username, or the call's audio (raw mu-law frames, Twilio's base64
payloads, or a long run of ``\\x`` escapes). Redis values under this run's own queue must also stay
small: a job is a few ids, never a recording.

Snapshots are taken at three moments (after the calls, after the dashboard work is queued, at the
end), because RQ deletes job hashes once their result expires and the enrolment upload key is
deleted by its job; the upload key is the one place audio is meant to be in Redis (briefly, with
a TTL) and is checked for exactly that.
"""

from __future__ import annotations

import base64
import http.cookiejar
import logging
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest
from flask import Flask
from redis import Redis
from rq.serializers import resolve_serializer
from sqlalchemy import select

from analysis.channel import mulaw_encode
from dashboard.config import config_of, configure
from dashboard.users import add_user, create_api_token
from painline.app import settings_of
from painline.config import Settings
from painline.replay import chunks, replay_call
from painline.workers import PainlineSimpleWorker, build_context
from schema.contract import flag_channel
from schema.models import Call, Flag, Patient, UtteranceAudio
from tests.app_fixtures import AUTH_TOKEN, AppServer, app_redis_url, wav_file
from tests.e2e_fixtures import call_audio, installed
from tests.worker_fixtures import calm, pain
from worker.context import WorkerContext

NUMBER = "+15550001234"
NUMBER_DIGITS = "5550001234"
PATIENT_REF = "PRIV-REF-7Q3X"
NURSE = "nurse-quillfeather"
ADMIN = "admin-marchbanks"
PASSWORD = "correct horse battery staple"
LOW_THRESHOLD = 0.005  # the toy model is timid on VAD-cut audio; a low threshold makes sure a flag is raised
MAX_JOB_VALUE_BYTES = 4096
"""Anything of ours in Redis bigger than this is suspect: jobs carry ids, a recording is 8 kB a second."""

# the number with optional separators between digits, and the E.164 "+" in any encoding
_NUMBER_SPELLINGS = re.compile(r"(?:\+|%2b|00)?1?[\s().\-]*" + r"[\s().\-/]*".join(NUMBER_DIGITS), re.IGNORECASE)
# the repr of binary audio: dense \x escapes with a few printable bytes between them
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-f]{2}[^\\\s]{0,3}){16,}", re.IGNORECASE)
_HREF = re.compile(r'(?:href|action|src)="([^"]*)"')


# ---------------------------------------------------------------------------------------------------
# what is searched for


@dataclass
class Secrets:
    """Everything that must not leak, in the forms it could leak in."""

    texts: list[str]
    audio_frames: list[bytes]
    audio_payloads: list[str]

    def text_hits(self, text: str) -> list[str]:
        hits = [t for t in self.texts if t.lower() in text.lower()]
        if _NUMBER_SPELLINGS.search(text):
            hits.append("caller number")
        if _ESCAPED_BYTES.search(text):
            hits.append("escaped binary")
        hits += [f"audio payload {p[:12]}..." for p in self.audio_payloads if p in text]
        return hits

    def bytes_hits(self, blob: bytes) -> list[str]:
        hits = [f"audio frame {i}" for i, frame in enumerate(self.audio_frames) if frame in blob]
        return hits + self.text_hits(blob.decode("latin-1"))


def _secrets(mulaw: list[bytes]) -> Secrets:
    frames: list[bytes] = []
    payloads: list[str] = []
    for audio in mulaw:
        for chunk in chunks(audio):
            if len(set(chunk)) > 8:  # frames with real signal only: silence is the same everywhere
                frames.append(chunk[:48])
                payloads.append(base64.b64encode(chunk).decode("ascii"))
    return Secrets(
        texts=[NUMBER, urllib.parse.quote(NUMBER), urllib.parse.quote_plus(NUMBER), PATIENT_REF, NURSE, ADMIN],
        audio_frames=frames,
        audio_payloads=payloads,
    )


# ---------------------------------------------------------------------------------------------------
# Redis


def _all_keys(connection: Redis) -> set[bytes]:
    return set(connection.scan_iter(count=1000))


def _raw(reply: object) -> bytes:
    """A reply from a connection that does not decode responses (redis-py types it ``bytes | str``)."""
    assert isinstance(reply, bytes), reply
    return reply


def _values(connection: Redis, key: bytes) -> list[bytes]:
    """Every value stored under ``key`` as bytes; RQ job payloads opened with RQ's own serializer."""
    kind = connection.type(key)
    out: list[bytes] = [key]
    if kind == b"string":
        value = connection.get(key)
        out += [_raw(value)] if value is not None else []
    elif kind == b"hash":
        mapping = connection.hgetall(key)
        for name, value in mapping.items():
            out += [_raw(name), _raw(value)]
        if b"data" in mapping:
            out.append(_job_payload(_raw(mapping[b"data"])).encode("utf-8", "backslashreplace"))
    elif kind == b"list":
        out += [_raw(item) for item in connection.lrange(key, 0, -1)]
    elif kind == b"set":
        out += [_raw(member) for member in connection.smembers(key)]
    elif kind == b"zset":
        # withscores=True: (member, score) pairs, which redis-py's return type does not single out
        scored = cast(list[tuple[object, float]], connection.zrange(key, 0, -1, withscores=True))
        out += [_raw(member) for member, _ in scored]
    elif kind == b"stream":
        # a synchronous client's XRANGE: a list of (id, fields), never None
        entries = cast(list[tuple[object, dict[object, object]]], connection.xrange(key))
        for entry_id, fields in entries:
            out.append(_raw(entry_id))
            for field_name, field_value in fields.items():
                out += [_raw(field_name), _raw(field_value)]
    return out


def _job_payload(data: bytes) -> str:
    """An RQ job's ``data`` field as RQ reads it: ``(func_name, instance, args, kwargs)``."""
    try:
        raw = zlib.decompress(data)
    except zlib.error:
        raw = data
    func_name, instance, args, kwargs = resolve_serializer(None).loads(raw)
    return repr({"func": func_name, "instance": instance, "args": args, "kwargs": kwargs})


@dataclass
class RedisSnapshot:
    """The values of every key created since ``baseline`` was taken, by key."""

    values: dict[bytes, list[bytes]] = field(default_factory=dict)

    @classmethod
    def take(cls, connection: Redis, before: set[bytes]) -> RedisSnapshot:
        snap = cls()
        for key in _all_keys(connection) - before:
            snap.values[key] = _values(connection, key)
        return snap


# ---------------------------------------------------------------------------------------------------
# HTTP as a browser and as an API client (urllib: it logs nothing client-side)


class Browser:
    """A cookie-keeping HTTP client that records every URL it requested or was sent to."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.urls: list[str] = []  # what the test asked for
        self.redirects: list[str] = []  # where the server sent it
        self.linked: list[str] = []  # every href, form action and src in the pages it got
        jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _Recorder(self.redirects))

    def request(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        url = self.base_url + path
        self.urls.append(url)
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with self._opener.open(req, timeout=30) as response:
                status, body = response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode("utf-8", "replace")
        self.linked += _HREF.findall(body)
        return status, body

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return self.request("GET", path, headers=headers)

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, str]:
        body = urllib.parse.urlencode(fields).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def post_files(self, path: str, fields: dict[str, str], files: dict[str, Path]) -> tuple[int, str]:
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, file in files.items():
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{file.name}"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            parts.append(head + file.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return self.request(
            "POST", path, b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )

    def login(self, username: str) -> None:
        _, page = self.get("/login")
        status, _ = self.post_form("/login", {"username": username, "password": PASSWORD, "csrf_token": _csrf(page)})
        assert status == 200, f"sign-in as {username} failed"  # 302 to "/" followed


class _Recorder(urllib.request.HTTPRedirectHandler):
    """Records every redirect target, the URLs a server sends a browser to."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        self.urls.append(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def privacy_context(app_settings: Settings, pain_model_path: Path, worker_redis: Redis) -> Iterator[WorkerContext]:
    settings = app_settings.with_(model_path=pain_model_path, flag_threshold=LOW_THRESHOLD)
    ctx = build_context(settings, worker_redis, speaker=False)
    ctx.flag_channel = f"painline-test-privacy-flags:{secrets.token_hex(6)}"
    with installed(ctx):
        yield ctx


@pytest.fixture
def privacy_app(painline_app: Flask, privacy_context: WorkerContext) -> Iterator[Flask]:
    prefix = f"painline-test-privacy-login:{secrets.token_hex(6)}:"
    configure(
        painline_app,
        replace(config_of(painline_app), login_throttle_prefix=prefix, flag_channel=privacy_context.flag_channel),
    )
    yield painline_app
    redis: Redis = painline_app.extensions["painline.redis"]
    keys = list(redis.scan_iter(match=f"{prefix}*"))
    if keys:
        redis.delete(*keys)


def _work(server: AppServer) -> None:
    queue = server.queue
    worker = PainlineSimpleWorker([queue], connection=queue.connection, job_class=queue.job_class)
    worker.work(burst=True, logging_level="DEBUG")  # RQ's own DEBUG lines are searched too
    failed = queue.failed_job_registry
    assert failed.count == 0, [queue.fetch_job(j).exc_info for j in failed.get_job_ids()]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------------
# the inspection


def test_no_caller_data_in_logs_jobs_redis_or_urls(
    privacy_app: Flask,
    app_server: AppServer,
    privacy_context: WorkerContext,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    connection = Redis.from_url(app_redis_url())
    listener = connection.pubsub(ignore_subscribe_messages=True)
    # the deployment's own channel too: nothing may be published anywhere, overridden or not
    listener.subscribe(privacy_context.flag_channel, flag_channel(settings_of(privacy_app).channel_namespace))
    before = _all_keys(connection)
    snapshots: list[RedisSnapshot] = []
    sessions = app_server.app.extensions["painline.sessions"]
    try:
        add_user(sessions, NURSE, "nurse", PASSWORD)
        add_user(sessions, ADMIN, "admin", PASSWORD)
        tokens = {NURSE: create_api_token(sessions, NURSE), ADMIN: create_api_token(sessions, ADMIN)}

        # -- two calls: one known by the hotline's reference, one by the number alone -----------------
        by_ref = call_audio(pain(137.0, seed=7101), pain(137.0, seed=7102), pain(137.0, seed=7103), seed=9071)
        by_number = call_audio(calm(151.0, seed=7201), calm(151.0, seed=7202), seed=9071)
        sid_ref = replay_call(
            by_ref,
            base_url=app_server.url,
            public_url=app_server.url,
            auth_token=AUTH_TOKEN,
            from_number=NUMBER,
            patient_ref=PATIENT_REF,
            speed=0,
        ).call_sid
        sid_number = replay_call(
            by_number,
            base_url=app_server.url,
            public_url=app_server.url,
            auth_token=AUTH_TOKEN,
            from_number=NUMBER,
            speed=0,
        ).call_sid
        snapshots.append(RedisSnapshot.take(connection, before))  # the queued jobs, before a worker ran
        _work(app_server)
        with sessions() as s:
            call = s.scalars(select(Call).where(Call.call_sid == sid_ref)).one()
            call_id, patient_id = call.id, call.patient_id
            flag = s.scalars(select(Flag).where(Flag.call_id == call_id)).one_or_none()
            assert flag is not None, "the pain call should have been flagged"
            flag_id = flag.id
            assert s.get(Patient, patient_id).key == f"ref:{PATIENT_REF}"
            number_call_id = s.scalars(select(Call.id).where(Call.call_sid == sid_number)).one()
            assert s.scalars(select(UtteranceAudio)).first() is None  # scored audio is gone

        # -- the nurse: queue, call page, acknowledge, resolve as no pain (queues baseline growth) ----
        nurse = Browser(app_server.url)
        status, _ = nurse.post_form(
            "/login", {"username": NURSE, "password": "wrong password!!", "csrf_token": _csrf(nurse.get("/login")[1])}
        )
        assert status == 401  # a failed sign-in: the throttle counts it in Redis
        nurse.login(NURSE)
        assert nurse.get("/")[0] == 200
        assert nurse.get("/queue/rows")[0] == 200
        status, page = nurse.get(f"/calls/{call_id}")
        assert status == 200
        assert nurse.get(f"/calls/{number_call_id}")[0] == 200
        nurse.post_form(f"/flags/{flag_id}/acknowledge", {"csrf_token": _csrf(page), "call_id": str(call_id)})
        status, _ = nurse.post_form(
            f"/flags/{flag_id}/resolve",
            {
                "csrf_token": _csrf(page),
                "call_id": str(call_id),
                "label": "no_pain",
                "note": f"spoke with {PATIENT_REF}, fine",
            },
        )
        assert status == 200

        # -- the admin: search by reference, the baseline, an enrolment upload, the audit log ---------
        admin = Browser(app_server.url)
        admin.login(ADMIN)
        status, results = admin.get("/admin/patients?" + urllib.parse.urlencode({"q": PATIENT_REF}))
        assert status == 200 and f"/admin/patients/{patient_id}" in results
        status, page = admin.get(f"/admin/patients/{patient_id}")
        assert status == 200
        recording = wav_file(tmp_path / "normal-voice.wav", calm(137.0, seed=7301, seconds=2.0))
        status, _ = admin.post_files(
            f"/admin/patients/{patient_id}/enrol", {"csrf_token": _csrf(page)}, {"audio": recording}
        )
        assert status == 200
        assert admin.get("/admin/audit")[0] == 200
        assert admin.get("/admin/audit?" + urllib.parse.urlencode({"actor": NURSE}))[0] == 200

        # -- the JSON API with bearer tokens -----------------------------------------------------------
        api = Browser(app_server.url)
        for path in ("/api/v1/me", "/api/v1/queue", f"/api/v1/calls/{call_id}"):
            assert api.get(path, {"Authorization": f"Bearer {tokens[NURSE]}"})[0] == 200
        for path in (f"/api/v1/patients?q={PATIENT_REF}", f"/api/v1/patients/{patient_id}/baseline", "/api/v1/audit"):
            assert api.get(path, {"Authorization": f"Bearer {tokens[ADMIN]}"})[0] == 200

        snapshots.append(RedisSnapshot.take(connection, before))  # growth and enrolment jobs queued
        _work(app_server)
        snapshots.append(RedisSnapshot.take(connection, before))
        published = []
        while (message := listener.get_message(timeout=0.2)) is not None:
            published.append(message["data"])
    finally:
        listener.close()
        connection.close()

    secrets_ = _secrets([by_ref, by_number, mulaw_encode(calm(137.0, seed=7301, seconds=2.0))])
    found: list[str] = []

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert any("/twilio/voice" in r.getMessage() for r in caplog.records), "the access log was not captured"
    assert any(r.name.startswith("rq") for r in caplog.records), "RQ's worker log was not captured"
    for record in caplog.records:
        line = formatter.format(record)
        found += [f"log {record.name}: {hit}" for hit in secrets_.text_hits(line)]
    out, err = capfd.readouterr()
    found += [f"stdout/stderr: {hit}" for hit in secrets_.text_hits(out + err)]

    own = app_server.settings.queue_name.encode()
    jobs_seen = 0
    for snapshot in snapshots:
        for key, values in snapshot.values.items():
            upload = key.startswith(b"painline:enrol-upload:")
            for value in values:
                hits = secrets_.bytes_hits(value)
                if upload:  # the one place audio is meant to be, briefly: no caller text even there
                    hits = [h for h in hits if not h.startswith("audio frame")]
                found += [f"redis {key!r}: {hit}" for hit in hits]
                if own in key and len(value) > MAX_JOB_VALUE_BYTES:
                    found.append(f"redis {key!r}: a {len(value)}-byte value")
            jobs_seen += own in key and key.count(b":") >= 3
    assert jobs_seen, "no RQ job hash of this run was inspected"
    assert not any(k.startswith(b"painline:enrol-upload:") for k in snapshots[-1].values), (
        "the enrolment upload outlived its job"
    )

    for message in published:
        found += [f"published message: {hit}" for hit in secrets_.bytes_hits(message)]
    for browser in (nurse, admin, api):
        # the test typed some query strings itself (a search, an audit filter): their paths must be clean,
        # and the server's redirects and links must be clean whole
        for url in [urllib.parse.urlsplit(u).path for u in browser.urls] + browser.redirects + browser.linked:
            found += [f"url {url}: {hit}" for hit in secrets_.text_hits(url)]

    assert found == [], "\n".join(sorted(set(found)))


def test_the_search_finds_every_form_it_looks_for() -> None:
    """The inspection above is only as good as its search: each form of each secret must be found."""
    audio = call_audio(pain(137.0, seed=7101), seed=9071)
    found = _secrets([audio])
    for leak in (
        NUMBER,
        "15550001234",
        "5550001234",
        "%2B15550001234",
        "+1 (555) 000-1234",
        "555.000.1234",
        PATIENT_REF.lower(),
        f"by {NURSE}",
        ADMIN,
        found.audio_payloads[3],
        repr(audio[8000:8400]),
    ):
        assert found.text_hits(f"x {leak} y"), leak
    assert found.bytes_hits(b"head" + found.audio_frames[2] + b"tail")
    assert found.text_hits("call 12 scored (baseline applied); job score-utterance-5550") == []
