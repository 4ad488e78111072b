"""worker.flags: one flag per call, only ever upgraded; signed webhook; failures never raise."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from schema.models import Flag, FlagStatus
from tests.worker_fixtures import add_utterance, make_call, make_patient, pain
from worker import jobs
from worker.context import WorkerContext
from worker.flags import (
    SIGNATURE_HEADER,
    FlagChange,
    level_for,
    post_webhook,
    raise_or_update_flag,
    sign,
    verify,
)
from worker.scoring import ScoreOutcome

SECRET = "webhook-secret-for-tests"


def test_levels() -> None:
    assert level_for(0.55, 0.5).value == "low"
    assert level_for(0.70, 0.5).value == "medium"
    assert level_for(0.90, 0.5).value == "high"


def test_signature_round_trip() -> None:
    body = b'{"flag_id":1}'
    header = sign(body, SECRET)
    assert header.startswith("sha256=") and verify(body, SECRET, header)
    assert not verify(body + b" ", SECRET, header)
    assert not verify(body, "other", header)


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []  # noqa: RUF012
    status = 204

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"received": [], "status": 204})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


CHANGE = FlagChange("flag.raised", 7, 3, "high", 0.93, 0.93, "open")


def test_webhook_is_signed(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    assert post_webhook(url, SECRET, CHANGE)
    ((headers, body),) = handler.received
    assert verify(body, SECRET, headers[SIGNATURE_HEADER])
    doc = json.loads(body)
    assert doc["flag_id"] == 7 and doc["call_id"] == 3 and doc["level"] == "high"


def test_webhook_failures_are_logged_not_raised(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    handler.status = 500
    assert post_webhook(url, SECRET, CHANGE) is False
    assert post_webhook("http://127.0.0.1:1/hook", SECRET, CHANGE, timeout_s=0.5) is False
    assert post_webhook(url, "", CHANGE) is False  # no secret: refused, not sent unsigned
    assert len(handler.received) == 1


def test_raise_then_upgrade_never_downgrade(worker_ctx: WorkerContext) -> None:
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, make_patient(s))
        first = raise_or_update_flag(s, call, 0.55, 0.5)
        assert first is not None and first.event == "flag.raised" and first.level == "low"
        assert raise_or_update_flag(s, call, 0.52, 0.5) is None  # lower: untouched
        same_level = raise_or_update_flag(s, call, 0.60, 0.5)
        assert same_level is None  # higher but still "low": stored, not announced
        up = raise_or_update_flag(s, call, 0.95, 0.5)
        assert up is not None and up.event == "flag.upgraded" and up.level == "high"
        flag = s.scalars(select(Flag).where(Flag.call_id == call.id)).one()
        assert flag.severity == pytest.approx(0.95)
        flag.status = FlagStatus.RESOLVED.value
        assert raise_or_update_flag(s, call, 0.99, 0.5) is None  # the nurse decided
        assert flag.severity == pytest.approx(0.95)


def test_scoring_posts_the_flag(worker_ctx: WorkerContext, receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    worker_ctx.flag_webhook_url, worker_ctx.flag_webhook_secret = url, SECRET
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, make_patient(s))
        ids = [add_utterance(s, call, i, pain(seed=90 + i)) for i in range(2)]
        call_id = call.id
    for uid in ids:
        jobs.score_utterance(uid)
    assert handler.received
    headers, body = handler.received[0]
    assert verify(body, SECRET, headers[SIGNATURE_HEADER])
    assert json.loads(body)["call_id"] == call_id


def test_unreachable_webhook_does_not_fail_scoring(worker_ctx: WorkerContext) -> None:
    worker_ctx.flag_webhook_url, worker_ctx.flag_webhook_secret = "http://127.0.0.1:1/hook", SECRET
    worker_ctx.webhook_timeout_s = 0.5
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, make_patient(s))
        ids = [add_utterance(s, call, i, pain(seed=95 + i)) for i in range(2)]
    assert [jobs.score_utterance(uid) for uid in ids] == [ScoreOutcome.SCORED, ScoreOutcome.SCORED]
    with worker_ctx.sessions() as s:
        assert s.scalars(select(Flag)).one().status == "open"
