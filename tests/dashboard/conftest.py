"""Fixtures of the dashboard tests only, built on the shared ``pages_app`` (tests/dashboard_fixtures.py).

- ``client_as``: a factory giving a Flask test client signed in through ``/login`` as a role.
- ``queue_seed``: flags at chosen severities and times plus a live call, to check the queue order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schema.db import session_scope
from schema.models import CallStatus, Flag, FlagStatus, utcnow
from tests.dashboard.pages import QueueSeed, make_flagged_call
from tests.dashboard_fixtures import DashUsers, login


@pytest.fixture
def client_as(pages_app: Flask, dash_users: DashUsers) -> Callable[[str], FlaskClient]:
    """``client_as("nurse")``: a new test client signed in as that role's user."""

    def make(role: str) -> FlaskClient:
        client = pages_app.test_client()
        response = login(client, DashUsers.name(role))
        assert response.status_code == 302, response.get_data(as_text=True)
        return client

    return make


@pytest.fixture
def queue_seed(pages_app: Flask) -> QueueSeed:
    sessions: sessionmaker[Session] = pages_app.extensions["painline.sessions"]
    now = utcnow()
    with session_scope(sessions) as s:
        severe_old = make_flagged_call(s, ref="Q-1", severity=0.95, started_at=now - timedelta(minutes=30))
        mild_new = make_flagged_call(s, ref="Q-2", severity=0.70, level="low", started_at=now - timedelta(minutes=2))
        mild_old = make_flagged_call(s, ref="Q-3", severity=0.70, level="low", started_at=now - timedelta(minutes=20))
        live = make_flagged_call(
            s, ref="Q-4", severity=None, started_at=now - timedelta(minutes=1), status=CallStatus.STREAMING.value
        )
        resolved = make_flagged_call(s, ref="Q-5", severity=0.99, started_at=now - timedelta(minutes=5))
        flag = s.scalars(select(Flag).where(Flag.call_id == resolved)).one()
        flag.status = FlagStatus.RESOLVED.value
        flag.label = "unsure"
    return QueueSeed(severe_old, mild_new, mild_old, live, resolved)
