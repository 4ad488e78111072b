"""Accounts and tokens (``painline users ...``), flag publishing and the threshold the dashboard shows."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from dashboard.config import config_of
from dashboard.sessions import store_of
from dashboard.store import Store, configured_threshold, patient_label
from dashboard.users import UserError, add_cli_parser, add_user, create_api_token, run_command
from painline.app import dashboard_config
from schema.db import session_scope
from schema.models import AuditEvent, User
from tests.dashboard_fixtures import Seed, login


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="painline")
    add_cli_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_first_admin_from_the_documented_command_with_password_on_stdin(dash_app: Flask) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    status = run_command(
        sessions,
        parse(["users", "add", "--role", "admin", "chief"]),
        stdin=io.StringIO("a long enough secret\n"),
        revoker=None,
    )
    assert status == 0
    with session_scope(sessions) as s:
        user = s.scalars(select(User).where(User.username == "chief")).one()
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "user.create")).all()
    assert user.role == "admin" and user.password_hash.startswith("scrypt:")
    assert "a long enough secret" not in json.dumps([e.detail for e in events])
    assert login(dash_app.test_client(), "chief", "a long enough secret").status_code == 302


def test_cli_refuses_weak_passwords_duplicates_and_bad_roles(dash_app: Flask, capsys: pytest.CaptureFixture) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    assert (
        run_command(
            sessions, parse(["users", "add", "--role", "nurse", "n1"]), stdin=io.StringIO("short\n"), revoker=None
        )
        == 1
    )
    assert "at least" in capsys.readouterr().err
    add_user(sessions, "n1", "nurse", "twelve chars ok")
    with pytest.raises(UserError, match="already exists"):
        add_user(sessions, "n1", "nurse", "twelve chars ok")
    with pytest.raises(UserError, match="role"):
        add_user(sessions, "n2", "superuser", "twelve chars ok")
    with pytest.raises(UserError, match="usernames"):
        add_user(sessions, "Bad Name", "nurse", "twelve chars ok")
    with pytest.raises(SystemExit):
        parse(["users", "add", "n3"])  # --role is required: there is no default role either


def test_token_command_prints_a_working_token_once(dash_app: Flask, capsys: pytest.CaptureFixture) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    add_user(sessions, "svc", "auditor", "twelve chars ok")
    assert run_command(sessions, parse(["users", "token", "svc"]), revoker=None) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("pl_")
    me = dash_app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json is not None and me.json["role"] == "auditor"
    assert run_command(sessions, parse(["users", "revoke-tokens", "svc"]), revoker=None) == 0
    assert dash_app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with pytest.raises(UserError):
        create_api_token(sessions, "nobody")


def test_password_and_deactivate_commands(dash_app: Flask) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    add_user(sessions, "n1", "nurse", "twelve chars ok")
    store = store_of(dash_app)
    assert (
        run_command(sessions, parse(["users", "password", "n1"]), stdin=io.StringIO("another secret!\n"), revoker=store)
        == 0
    )
    assert login(dash_app.test_client(), "n1", "twelve chars ok").status_code == 401
    assert login(dash_app.test_client(), "n1", "another secret!").status_code == 302
    assert run_command(sessions, parse(["users", "deactivate", "n1"]), revoker=store) == 0
    assert login(dash_app.test_client(), "n1", "another secret!").status_code == 401


def test_patient_labels_never_show_hmac_keys() -> None:
    assert patient_label("ref:AB-1", 3) == "AB-1"
    assert patient_label("hmac:" + "f" * 64, 3) == "caller #3"
    assert patient_label(None, None) == "unknown caller"


def test_flag_changes_are_published_for_live_queues(dash_app: Flask, dash_seed: Seed) -> None:
    redis = dash_app.extensions["painline.redis"]
    pubsub = redis.pubsub()
    pubsub.subscribe(config_of(dash_app).flag_channel)
    try:
        pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        Store.for_app(dash_app).flags.acknowledge_flag(dash_seed.flag_id, "nurse1")
        for _ in range(20):
            message = pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                body = json.loads(message["data"])
                if body.get("flag_id") == dash_seed.flag_id:
                    break
        else:
            pytest.fail("no flag.acknowledged message")
    finally:
        pubsub.close()
    assert body["event"] == "flag.acknowledged" and body["status"] == "acknowledged"
    assert set(body) == {"event", "flag_id", "call_id", "level", "severity", "status", "sent_at"}


def test_threshold_falls_back_to_the_model_card(tmp_path: Path) -> None:
    from painline.config import Settings

    model = tmp_path / "m.joblib"
    (tmp_path / "m.card.json").write_text(json.dumps({"threshold": {"value": 0.42}}))

    def threshold(**settings: Any) -> float | None:
        return configured_threshold(dashboard_config(Settings(**settings)))

    assert threshold(model_path=model) == pytest.approx(0.42)
    assert threshold(model_path=model, flag_threshold=0.7) == pytest.approx(0.7)
    assert threshold(model_path=tmp_path / "none.joblib") is None
