"""The sign-in limiter (issue 13): exact under parallel attempts, per username, address and pair, the
real client address behind trusted proxies, Retry-After, and no lockout of a nurse by strangers."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from dashboard.config import config_of, configure
from dashboard.limiter import LoginLimiter
from dashboard.users import add_user
from painline.app import close_app, create_app
from painline.config import Settings
from schema.contract import LoginCounter
from schema.db import session_scope
from schema.models import AuditEvent
from tests.dashboard_fixtures import PASSWORD, DashUsers, csrf_of, own_key_namespace

WRONG = "not the password at all"


def attempt(
    client: FlaskClient, username: str, password: str, *, address: str | None = None, forwarded_for: str | None = None
) -> TestResponse:
    """One sign-in from ``address`` (the socket's) and/or through a proxy that sent ``forwarded_for``."""
    environ = {"REMOTE_ADDR": address} if address else {}
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    client.get("/login", environ_base=environ, headers=headers)
    data = {"username": username, "password": password, "csrf_token": csrf_of(client)}
    return client.post("/login", data=data, environ_base=environ, headers=headers)


def count_audit(app: Flask, action: str) -> int:
    with session_scope(app.extensions["painline.sessions"]) as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)) or 0)


def limits(app: Flask, *, pair: int, address: int, user: int) -> None:
    configure(app, replace(config_of(app), login_limit=pair, login_address_limit=address, login_user_limit=user))


def test_a_parallel_burst_is_checked_no_more_than_the_limit(dash_app: Flask, dash_users: DashUsers) -> None:
    clients = [dash_app.test_client() for _ in range(40)]
    for client in clients:
        csrf_of(client)  # each its own anonymous session and CSRF token, made before the burst

    def wrong(client: FlaskClient) -> int:
        data = {"username": "admin1", "password": WRONG, "csrf_token": csrf_of(client)}
        return client.post("/login", data=data).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = Counter(pool.map(wrong, clients))
    limit = config_of(dash_app).login_limit
    assert statuses == {401: limit, 429: 40 - limit}
    assert count_audit(dash_app, "auth.login_failed") == limit  # one row per password actually checked
    assert count_audit(dash_app, "auth.login_throttled") == 40 - limit


def test_a_refusal_says_when_to_retry(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    for _ in range(config_of(dash_app).login_limit):
        assert attempt(client, "nurse1", WRONG).status_code == 401
    refused = attempt(client, "nurse1", PASSWORD)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 0 < retry_after <= config_of(dash_app).login_window_s
    page = refused.get_data(as_text=True)
    assert re.search(r"Try again in \d+ min \d\d s \(after \d{4}-\d\d-\d\d \d\d:\d\d UTC\)", page), page


def test_the_address_limit_stops_spraying_over_many_usernames(dash_app: Flask, dash_users: DashUsers) -> None:
    limits(dash_app, pair=5, address=3, user=50)
    sprayer = dash_app.test_client()
    for name in ("nurse1", "admin1", "auditor1"):
        assert attempt(sprayer, name, WRONG, address="198.51.100.7").status_code == 401
    assert attempt(sprayer, "someone-else", WRONG, address="198.51.100.7").status_code == 429
    # another address is not affected
    assert attempt(dash_app.test_client(), "nurse1", PASSWORD, address="198.51.100.8").status_code == 302


def test_successful_sign_ins_do_not_use_up_a_shared_address(dash_app: Flask, dash_users: DashUsers) -> None:
    limits(dash_app, pair=2, address=2, user=2)
    for _ in range(5):  # a ward behind one NAT address: many sign-ins, none failed
        for name in ("nurse1", "admin1"):
            assert attempt(dash_app.test_client(), name, PASSWORD, address="192.0.2.10").status_code == 302


def test_strangers_cannot_lock_a_nurse_out_of_her_own_station(dash_app: Flask, dash_users: DashUsers) -> None:
    limits(dash_app, pair=2, address=100, user=4)
    station = "10.0.0.5"
    assert attempt(dash_app.test_client(), "nurse1", PASSWORD, address=station).status_code == 302
    for attacker in ("203.0.113.1", "203.0.113.2"):
        for _ in range(2):
            assert attempt(dash_app.test_client(), "nurse1", WRONG, address=attacker).status_code == 401
    # the account-wide limit is full: a fresh address is refused even with the right password ...
    fresh = attempt(dash_app.test_client(), "nurse1", PASSWORD, address="203.0.113.3")
    assert fresh.status_code == 429 and "Retry-After" in fresh.headers
    # ... while the station she signed in from before still signs her in
    assert attempt(dash_app.test_client(), "nurse1", PASSWORD, address=station).status_code == 302
    # and the attackers' own pairs stay blocked
    assert attempt(dash_app.test_client(), "nurse1", PASSWORD, address="203.0.113.1").status_code == 429


def test_counter_keys_hold_no_username_or_address_in_clear(dash_app: Flask, dash_users: DashUsers) -> None:
    attempt(dash_app.test_client(), "admin1", WRONG, address="198.51.100.23")
    redis: Redis = dash_app.extensions["painline.redis"]
    keys = [k.decode() for k in redis.scan_iter(match=f"painline:{config_of(dash_app).key_namespace}:login:*")]
    assert {k.split(":")[3] for k in keys} == {c.value for c in LoginCounter}
    assert not any("admin1" in k or "198.51.100.23" in k for k in keys)


def test_limiter_window_expires(dash_app: Flask) -> None:
    limiter = LoginLimiter(
        dash_app.extensions["painline.redis"],
        b"k",
        config_of(dash_app).key_namespace,
        limit=2,
        address_limit=10,
        user_limit=10,
        window_s=1,
    )
    assert limiter.admit("u", "1.2.3.4").admitted and limiter.admit("u", "1.2.3.4").admitted
    refused = limiter.admit("u", "1.2.3.4")
    assert refused.refused_by is LoginCounter.USER_AT_ADDRESS and refused.retry_after_s == 1
    assert limiter.admit("u", "5.6.7.8").admitted
    time.sleep(1.1)
    assert limiter.admit("u", "1.2.3.4").admitted


@pytest.fixture
def proxied_app(app_settings: Settings) -> Iterator[Flask]:
    """The app as deployed behind one reverse proxy (``PAINLINE_TRUSTED_PROXIES=1``)."""
    app = create_app(app_settings.with_(trusted_proxies=1))
    try:
        with own_key_namespace(app, "test-proxy"):
            add_user(app.extensions["painline.sessions"], "nurse1", "nurse", PASSWORD)
            yield app
    finally:
        close_app(app)


def test_trusted_proxy_setting_uses_the_address_the_proxy_saw(proxied_app: Flask) -> None:
    limit = config_of(proxied_app).login_limit
    for n in range(limit):
        # the client controls what it puts before the proxy's entry; only the last one counts
        forwarded = f"198.18.0.{n}, 203.0.113.50"
        assert attempt(proxied_app.test_client(), "nurse1", WRONG, forwarded_for=forwarded).status_code == 401
    blocked = attempt(proxied_app.test_client(), "nurse1", PASSWORD, forwarded_for="9.9.9.9, 203.0.113.50")
    assert blocked.status_code == 429
    # the nurse is another client behind the same proxy: not blocked
    assert attempt(proxied_app.test_client(), "nurse1", PASSWORD, forwarded_for="203.0.113.60").status_code == 302


def test_without_trusted_proxies_forwarded_for_is_ignored(dash_app: Flask, dash_users: DashUsers) -> None:
    limit = config_of(dash_app).login_limit
    for n in range(limit):
        forwarded = f"203.0.113.{n}"
        assert attempt(dash_app.test_client(), "nurse1", WRONG, forwarded_for=forwarded).status_code == 401
    # a client cannot escape its limit by claiming another address
    assert attempt(dash_app.test_client(), "nurse1", PASSWORD, forwarded_for="203.0.113.99").status_code == 429
