"""Issue 13, the worklist: calls announced by the telephony layer as their stream starts and ends,
the query-side "live" rule, and the queue's sort, filters and owner (real PostgreSQL and Redis)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from redis.client import PubSub
from rq import Queue
from sqlalchemy.orm import Session, sessionmaker

from dashboard import formatting
from dashboard.config import config_of, configure
from dashboard.nurse import queue_view
from dashboard.store import QueueSort, QueueState, SortDirection, Store
from schema.contract import LiveEvent, call_channel
from schema.db import session_scope
from schema.models import Call, CallStatus, Flag, FlagStatus, Patient, utcnow
from telephony import tokens
from telephony.session import StreamConfig, StreamSession
from tests.dashboard.pages import make_flagged_call, queue_order
from tests.telephony_fixtures import HMAC_KEY, TwilioStream, new_sid

ClientAs = Callable[[str], FlaskClient]


# ---------------------------------------------------------------------------------------------------
# the telephony layer announces stream start and end


def _listen(redis: Redis, channel: str) -> PubSub:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    while pubsub.get_message(timeout=0.5) is not None:  # drain the subscribe confirmation
        pass
    return pubsub


def _next(pubsub: PubSub, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            return json.loads(message["data"])
    raise AssertionError("no message on the call channel")


def test_a_stream_announces_its_start_and_end_on_the_deployment_call_channel(
    tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    channel = call_channel(f"test-{secrets.token_hex(6)}")
    call_sid = new_sid("CA")
    issued = tokens.issue(call_sid, HMAC_KEY, 120)
    with session_scope(tel_sessions) as session:
        session.add(Call(call_sid=call_sid, consent=True))
        tokens.record(session, issued)
    stream = TwilioStream(call_sid=call_sid, token=issued.token)
    messages = stream.messages(b"\xff" * 1600)
    pubsub = _listen(rq_queue.connection, channel)
    try:
        live = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY, call_channel=channel))
        live.receive(messages[0])
        live.receive(messages[1])  # start: the call row is streaming, then announced
        started = _next(pubsub)
        assert started["event"] == LiveEvent.CALL_STARTED.value and started["call_id"] == live.call_id
        assert set(started) == {"event", "call_id", "sent_at"}  # ids only: nothing about the caller
        for raw in messages[2:]:
            live.receive(raw)  # media, then stop
        ended = _next(pubsub)
        assert ended == {**ended, "event": LiveEvent.CALL_ENDED.value, "call_id": live.call_id}
        with session_scope(tel_sessions) as s:
            ended_call = s.get(Call, live.call_id)
            assert ended_call is not None and ended_call.status != CallStatus.STREAMING.value
    finally:
        pubsub.close()


# ---------------------------------------------------------------------------------------------------
# the live rule


def _streaming_call(s: Session, ref: str, seconds_ago: float, *, connected: bool) -> int:
    patient = Patient(key=f"ref:{ref}")
    s.add(patient)
    s.flush()
    call = Call(
        call_sid=new_sid("CA"),
        patient_id=patient.id,
        started_at=utcnow() - timedelta(seconds=seconds_ago),
        status=CallStatus.STREAMING.value,
        stream_sid=new_sid("MZ") if connected else None,
    )
    s.add(call)
    s.flush()
    return call.id


def test_a_call_whose_stream_never_connected_stops_being_live_after_the_connect_window(
    pages_app: Flask, client_as: ClientAs
) -> None:
    configure(pages_app, replace(config_of(pages_app), stream_connect_s=60.0))
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        waiting = _streaming_call(s, "W-1", 20, connected=False)  # the stream may still connect
        never = _streaming_call(s, "N-1", 120, connected=False)  # 2 min and no stream: not live
        talking = _streaming_call(s, "T-1", 600, connected=True)  # a 10-minute call in progress
        flagged = _streaming_call(s, "F-1", 300, connected=False)
        s.add(Flag(call_id=flagged, severity=0.8, level="high", status=FlagStatus.OPEN.value))
    client = client_as("nurse")
    html = client.get("/").get_data(as_text=True)
    assert set(queue_order(html)) == {waiting, talking, flagged}
    rows = {r.call_id: r for r in Store.for_app(pages_app).flags.queue_rows(None)}
    assert rows[flagged].live is False  # its flag keeps it on the queue, but not as in progress
    assert rows[waiting].live and rows[talking].live
    page = client.get(f"/calls/{never}").get_data(as_text=True)
    assert 'class="live-dot"' not in page and "not connected" in page


# ---------------------------------------------------------------------------------------------------
# sort, filters, owner


def _worklist(app: Flask) -> dict[str, int]:
    now = utcnow()
    with session_scope(app.extensions["painline.sessions"]) as s:
        ids = {
            "high": make_flagged_call(s, ref="A-300", severity=0.9, started_at=now - timedelta(minutes=30)),
            "medium": make_flagged_call(
                s, ref="C-100", severity=0.7, level="medium", started_at=now - timedelta(minutes=5)
            ),
            "low": make_flagged_call(
                s, ref="B-200", severity=0.55, level="low", started_at=now - timedelta(minutes=12)
            ),
            "live": make_flagged_call(
                s, ref="D-400", severity=None, started_at=now - timedelta(minutes=1), status=CallStatus.STREAMING.value
            ),
        }
        raised = {"high": 25, "medium": 3, "low": 10}
        for name, minutes in raised.items():
            flag = s.query(Flag).filter(Flag.call_id == ids[name]).one()
            flag.raised_at = now - timedelta(minutes=minutes)
    return ids


def test_the_queue_sorts_by_each_column_through_links_that_work_without_javascript(
    pages_app: Flask, client_as: ClientAs
) -> None:
    ids = _worklist(pages_app)
    client = client_as("nurse")
    default = client.get("/").get_data(as_text=True)
    assert queue_order(default) == [ids["high"], ids["medium"], ids["low"], ids["live"]]
    assert 'aria-sort="descending"' in default and 'href="/?sort=patient&amp;dir=desc"' in default
    by_patient = client.get("/?sort=patient&dir=asc").get_data(as_text=True)
    assert queue_order(by_patient) == [ids["high"], ids["low"], ids["medium"], ids["live"]]
    assert 'href="/?sort=patient&amp;dir=desc"' in by_patient  # the active column's link flips it
    assert queue_order(client.get("/?sort=raised&dir=desc").get_data(as_text=True)) == [
        ids["medium"],
        ids["low"],
        ids["high"],
        ids["live"],  # no flag, so no raised time: last either way
    ]
    assert queue_order(client.get("/?sort=raised&dir=asc").get_data(as_text=True))[-1] == ids["live"]
    assert queue_order(client.get("/?sort=started&dir=asc").get_data(as_text=True)) == [
        ids["high"],
        ids["low"],
        ids["medium"],
        ids["live"],
    ]
    # the live refresh keeps the page's order: the rows fragment takes the same parameters
    assert 'data-src="/queue/rows?sort=patient&amp;dir=asc"' in by_patient
    rows = client.get("/queue/rows?sort=patient&dir=asc").get_data(as_text=True)
    assert queue_order(rows) == queue_order(by_patient)
    assert queue_order(client.get("/?sort=bogus&dir=sideways").get_data(as_text=True)) == queue_order(default)


def test_the_queue_filters_by_level_state_and_patient(pages_app: Flask, client_as: ClientAs) -> None:
    ids = _worklist(pages_app)
    client = client_as("nurse")
    assert queue_order(client.get("/?level=medium").get_data(as_text=True)) == [ids["medium"]]
    assert queue_order(client.get("/?state=unflagged").get_data(as_text=True)) == [ids["live"]]
    assert queue_order(client.get("/?patient=b-2").get_data(as_text=True)) == [ids["low"]]
    assert queue_order(client.get("/?patient=zzz").get_data(as_text=True)) == []
    assert "No rows match these filters." in client.get("/?patient=zzz").get_data(as_text=True)
    flags = Store.for_app(pages_app).flags
    flag_id = next(r.flag_id for r in flags.queue_rows(None) if r.call_id == ids["high"])
    assert flag_id is not None
    flags.acknowledge_flag(flag_id, "nurse1")
    assert queue_order(client.get("/?state=acknowledged").get_data(as_text=True)) == [ids["high"]]
    assert queue_order(client.get("/?state=open").get_data(as_text=True)) == [ids["medium"], ids["low"]]
    assert queue_view({"level": "urgent", "state": "x", "patient": " A " * 40}).level is None
    assert queue_view({"sort": "patient", "dir": "asc"}).sort is QueueSort.PATIENT
    assert queue_view({"sort": "patient", "dir": "asc"}).direction is SortDirection.ASC
    assert queue_view({"state": "acknowledged"}).state is QueueState.ACKNOWLEDGED


def test_an_acknowledged_flag_is_set_apart_and_names_its_owner(pages_app: Flask, client_as: ClientAs) -> None:
    ids = _worklist(pages_app)
    flags = Store.for_app(pages_app).flags
    flag_id = next(r.flag_id for r in flags.queue_rows(None) if r.call_id == ids["medium"])
    assert flag_id is not None
    client = client_as("nurse")
    html = client.get("/").get_data(as_text=True)
    assert html.count("unowned") == 4 and "badge-ack" not in html
    flags.acknowledge_flag(flag_id, "nurse1")
    html = client.get("/").get_data(as_text=True)
    row = html[html.index(f'data-call-id="{ids["medium"]}"') :].split("</tr>")[0]
    assert 'data-state="acknowledged"' in row and "acknowledged" in row.split('class="')[1].split('"')[0]
    assert '<span class="badge badge-ack">acknowledged</span>' in row
    assert '<td class="owner">nurse1</td>' in row
    other = html[html.index(f'data-call-id="{ids["low"]}"') :].split("</tr>")[0]
    assert 'data-state="open"' in other and "unowned" in other


def test_relative_times_and_one_display_zone_for_every_absolute_time(pages_app: Flask, client_as: ClientAs) -> None:
    now = utcnow()
    assert formatting.ago(now - timedelta(seconds=30), now) == "just now"
    assert formatting.ago(now - timedelta(minutes=3, seconds=59), now) == "3 min ago"
    assert formatting.ago(now - timedelta(hours=2, minutes=5), now) == "2 h 05 min ago"
    assert formatting.ago(now - timedelta(days=3, hours=1), now) == "3 d ago"
    ids = _worklist(pages_app)
    configure(pages_app, replace(config_of(pages_app), display_timezone="America/New_York"))
    html = client_as("nurse").get("/").get_data(as_text=True)
    row = html[html.index(f'data-call-id="{ids["medium"]}"') :].split("</tr>")[0]
    assert 'data-prefix="raised">raised 3 min ago</time>' in row
    assert " UTC" not in html.split("<main")[1]  # the page states one zone, the deployment's
    assert (" EDT" in row or " EST" in row) and "Times are in America/New_York." in html
