"""Server-side sign-in sessions in Redis: the cookie carries only an opaque random id.

Why not Flask's signed cookies: a signed cookie is valid wherever it is presented until it expires,
so signing out only asked the browser to forget it. A copy (a shared workstation, a proxy log, a
stolen laptop) kept working after sign-out, with its CSRF token, and came back to life when a
deactivated account was activated again. Here the cookie holds 256 random bits and nothing else;
what they stand for lives in Redis, and revoking it there ends it everywhere at once.

- A record (:class:`SessionRecord`) holds the user id (``None`` before sign-in: the login form's CSRF
  token and flash messages need somewhere to live), the CSRF token, when it was created and when it
  was last active. It is stored under :func:`schema.contract.session_key` of the SHA-256 of the id,
  so a Redis dump holds no usable cookie.
- Every signed-in session's digest is also in the user's set (:func:`schema.contract.user_sessions_key`),
  so :meth:`SessionStore.revoke_user` ends all of them (sign-out, password change, deactivation).
- A record is only ever *created* with ``SET NX`` and *updated* with ``SET XX``: a request that was
  in flight while its session was revoked cannot write it back to life.
- Signed-in records expire in Redis :data:`EXPIRY_NOTICE_S` after the idle timeout: the idle timeout
  itself is enforced by :mod:`dashboard.auth` (which decides what counts as activity), and the extra
  time lets it tell a returning nurse why she was signed out, and audit it, before the record is gone.
  Anonymous records live for the idle timeout only.

The Flask side is a :class:`flask.sessions.SessionInterface`, so ``flask.session``, ``flash`` and the
test client's ``session_transaction`` keep working; the session object only accepts the keys a
record stores (:data:`RECORD_KEYS`), so nothing is silently dropped between requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.datastructures import CallbackDict

from dashboard.config import config_of
from schema.contract import session_key, user_sessions_key

log = logging.getLogger(__name__)

USER_ID = "user_id"
CSRF_TOKEN = "csrf_token"
FLASHES = "_flashes"  # where flask.flash keeps its messages
RECORD_KEYS = frozenset({USER_ID, CSRF_TOKEN, FLASHES})
"""The only keys ``flask.session`` accepts: each is a field of :class:`SessionRecord`."""

EXPIRY_NOTICE_S = 8 * 3600
"""How long (about a shift) an idle-expired signed-in record stays in Redis so the nurse is told why."""

_REVOKE_USER = """
local members = redis.call('SMEMBERS', KEYS[1])
for _, digest in ipairs(members) do
    redis.call('DEL', ARGV[1] .. digest)
end
redis.call('DEL', KEYS[1])
return #members
"""
"""Atomic, so a sign-in completing at the same moment is either revoked too or created after: never lost."""


@dataclass(frozen=True)
class SessionRecord:
    """What a session id stands for (see the module docstring)."""

    user_id: int | None
    csrf_token: str | None
    created_at: float
    last_active: float
    flashes: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "user_id": self.user_id,
                "csrf_token": self.csrf_token,
                "created_at": self.created_at,
                "last_active": self.last_active,
                "flashes": [list(f) for f in self.flashes],
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> SessionRecord:
        data = json.loads(raw)
        user_id = data.get("user_id")
        return cls(
            user_id=int(user_id) if user_id is not None else None,
            csrf_token=data.get("csrf_token"),
            created_at=float(data["created_at"]),
            last_active=float(data["last_active"]),
            flashes=tuple((str(c), str(m)) for c, m in data.get("flashes", [])),
        )


def digest(session_id: str) -> str:
    """What Redis knows a session by: the SHA-256 of its id (the id is 256 random bits, so no salt)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class SessionStore:
    """Session records of one deployment (``namespace``) in Redis."""

    redis: Redis
    namespace: str
    idle_timeout_s: int

    def _key(self, session_id: str) -> str:
        return session_key(self.namespace, digest(session_id))

    def _ttl(self, record: SessionRecord) -> int:
        return self.idle_timeout_s + (EXPIRY_NOTICE_S if record.user_id is not None else 0)

    def load(self, session_id: str) -> SessionRecord | None:
        raw = self.redis.get(self._key(session_id))
        if raw is None:
            return None
        try:
            return SessionRecord.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("discarding an unreadable session record")
            return None

    def create(self, record: SessionRecord) -> str:
        """Store ``record`` under a fresh id and return the id (the cookie's value)."""
        session_id = new_session_id()
        ttl = self._ttl(record)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(session_id), record.to_json(), nx=True, ex=ttl)
        if record.user_id is not None:
            users = user_sessions_key(self.namespace, record.user_id)
            pipe.sadd(users, digest(session_id))
            pipe.expire(users, ttl)
        created = pipe.execute()[0]
        if not created:  # 256 random bits collided: not in this universe, but never overwrite a session
            raise RuntimeError("session id collision")
        return session_id

    def save(self, session_id: str, record: SessionRecord) -> bool:
        """Update an existing record; False (nothing written) if it was revoked or expired meanwhile."""
        ttl = self._ttl(record)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(session_id), record.to_json(), xx=True, ex=ttl)
        if record.user_id is not None:
            # every record of the user expires no later than this, so the set outlives them all
            pipe.expire(user_sessions_key(self.namespace, record.user_id), ttl)
        return bool(pipe.execute()[0])

    def revoke(self, session_id: str, user_id: int | None = None) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._key(session_id))
        if user_id is not None:
            pipe.srem(user_sessions_key(self.namespace, user_id), digest(session_id))
        pipe.execute()

    def revoke_user(self, user_id: int) -> int:
        """End every session of ``user_id``; returns how many records the set named (some may have expired)."""
        prefix = session_key(self.namespace, "")
        return int(self.redis.eval(_REVOKE_USER, 1, user_sessions_key(self.namespace, user_id), prefix))

    def count_user(self, user_id: int) -> int:
        """How many of ``user_id``'s sessions still exist (for tests and operators)."""
        members = self.redis.smembers(user_sessions_key(self.namespace, user_id))
        keys = [session_key(self.namespace, m.decode() if isinstance(m, bytes) else m) for m in members]
        return int(self.redis.exists(*keys)) if keys else 0


def store_of(app: Flask) -> SessionStore:
    config = config_of(app)
    return SessionStore(app.extensions["painline.redis"], config.key_namespace, config.idle_timeout_s)


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """``flask.session`` for one request: the record's fields as a dict, plus its id and times.

    ``modified`` is set by any change of the dict (as Flask's own session does) and by :meth:`touch`.
    """

    def __init__(self, session_id: str | None = None, record: SessionRecord | None = None) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        initial: dict[str, Any] = {}
        if record is not None:
            if record.user_id is not None:
                initial[USER_ID] = record.user_id
            if record.csrf_token:
                initial[CSRF_TOKEN] = record.csrf_token
            if record.flashes:
                initial[FLASHES] = list(record.flashes)
        super().__init__(initial, on_update)
        now = time.time()
        self.session_id = session_id
        self.created_at = record.created_at if record is not None else now
        self.last_active = record.last_active if record is not None else now
        self.modified = False

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in RECORD_KEYS:
            raise KeyError(f"the server-side session stores only {sorted(RECORD_KEYS)}, not {key!r}")
        super().__setitem__(key, value)

    def touch(self, now: float) -> None:
        """Record activity at ``now`` (the idle timeout counts from the last touch)."""
        self.last_active = now
        self.modified = True

    def forget(self) -> None:
        """Drop the id and everything in it: the record is gone (revoked); what is added next, if anything,
        goes into a new anonymous session under a new id."""
        self.session_id = None
        self.clear()
        now = time.time()
        self.created_at = self.last_active = now
        self.modified = True

    def to_record(self) -> SessionRecord:
        user_id = self.get(USER_ID)
        return SessionRecord(
            user_id=int(user_id) if user_id is not None else None,
            csrf_token=self.get(CSRF_TOKEN),
            created_at=self.created_at,
            last_active=self.last_active,
            flashes=tuple((str(c), str(m)) for c, m in self.get(FLASHES, [])),
        )


class RedisSessionInterface(SessionInterface):
    """Installs :class:`ServerSession` as ``flask.session``; the store is the app's, resolved per request
    (tests replace the dashboard config, and with it the namespace, after the app is built)."""

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        session_id = request.cookies.get(self.get_cookie_name(app))
        if not session_id:
            return ServerSession()
        try:
            record = store_of(app).load(session_id)
        except RedisError as exc:
            # no session store, no sign-in: the request goes on anonymous (pages send it to the login
            # page, which answers 503 while Redis is away)
            log.warning("session store unavailable (%s)", type(exc).__name__)
            return ServerSession()
        if record is None:
            return ServerSession()
        return ServerSession(session_id, record)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        if session.accessed:
            response.vary.add("Cookie")
        if not session.modified:
            return
        store = store_of(app)
        try:
            if not session:
                # nothing left to keep (forgotten, or an emptied anonymous session)
                if session.session_id is not None:
                    store.revoke(session.session_id)
                response.delete_cookie(
                    name,
                    domain=domain,
                    path=path,
                    secure=self.get_cookie_secure(app),
                    httponly=self.get_cookie_httponly(app),
                    samesite=self.get_cookie_samesite(app),
                )
                return
            record = session.to_record()
            if session.session_id is None:
                session.session_id = store.create(record)
            elif not store.save(session.session_id, record):
                return  # revoked while this request ran: it stays revoked
        except RedisError as exc:
            log.warning("could not save a session (%s)", type(exc).__name__)
            return
        response.set_cookie(
            name,
            session.session_id,
            domain=domain,
            path=path,
            httponly=self.get_cookie_httponly(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )


__all__ = [
    "CSRF_TOKEN",
    "EXPIRY_NOTICE_S",
    "RECORD_KEYS",
    "USER_ID",
    "RedisSessionInterface",
    "ServerSession",
    "SessionRecord",
    "SessionStore",
    "digest",
    "new_session_id",
    "store_of",
]
