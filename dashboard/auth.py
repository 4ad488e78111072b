"""Sign-in, sessions, roles and CSRF for the dashboard pages and the JSON API.

Who may do what:

- ``nurse``: the triage queue and call pages; acknowledges and resolves flags;
- ``admin``: everything a nurse can, plus patients, baselines and the audit log (``require_role`` and
  ``require_api_role`` always let an admin through);
- ``auditor``: may view, never change. Besides the per-route roles, every state-changing request by
  an auditor is refused here (403), whatever the route says, except signing out.

Sessions are server-side (:mod:`dashboard.sessions`): the ``painline_session`` cookie (HttpOnly,
SameSite=Lax, Secure when ``public_url`` is https) carries only a random id; the record in Redis holds
the user id, the CSRF token and the created/last-active times. Signing out, a password change and
deactivation revoke *every* session of the user (:func:`revoke_user_sessions`), so a copied cookie
dies with them and cannot come back when the account is activated again. A session idle for longer
than ``PAINLINE_IDLE_TIMEOUT_S`` (default 30 minutes) is revoked. Only requests a person made count as
activity: the queue page's background refresh (``X-Painline-Background``) and its event stream
(``Accept: text/event-stream``, which browsers send on every reconnect) do not, so a queue tab left
open at an unattended station is signed out like any other. The user row is read on every request,
so a deactivated account or a changed role takes effect at once.

CSRF: every POST/PUT/PATCH/DELETE must carry the session's token, as the ``csrf_token`` form field or
the ``X-CSRF-Token`` header, except the Twilio routes (blueprint ``telephony``: Twilio signs those)
and API calls that present a bearer token (a browser never attaches one by itself, so there is
nothing to forge). An API request with an ``Authorization`` header is judged on that header alone: a
bad token is a 401 even if a session cookie came with it.

Sign-in attempts are admitted by :class:`dashboard.limiter.LoginLimiter` (atomic counters per
username at an address, per address and per username; its docstring says why). A refused attempt gets
429 with ``Retry-After`` and the time to try again. The client address is ``request.remote_addr``,
which the composition root corrects behind ``PAINLINE_TRUSTED_PROXIES`` reverse proxies.
Sign-in, sign-out, failures, refusals
and idle expiry are written to the audit trail; passwords never are, and a failed sign-in for an
unknown username records no username (people type passwords into the username field).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException

from dashboard.config import config_of
from dashboard.formatting import deployment_clock, duration
from dashboard.limiter import LoginLimiter
from dashboard.security import (
    hash_api_token,
    new_csrf_token,
    safe_next_url,
    tokens_match,
    verify_password,
)
from dashboard.sessions import RedisSessionInterface, ServerSession, SessionRecord, SessionStore, store_of
from schema.audit import record
from schema.db import session_scope
from schema.models import ApiToken, User, UserRole

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, template_folder="templates")

NURSE = UserRole.NURSE.value
ADMIN = UserRole.ADMIN.value
AUDITOR = UserRole.AUDITOR.value
VIEWERS = (NURSE, ADMIN, AUDITOR)
"""Roles that may read triage data (pages and API)."""
ACTORS = (NURSE, ADMIN)
"""Roles that may act on flags."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
CSRF_EXEMPT_BLUEPRINTS = frozenset({"telephony"})
"""Blueprints whose unsafe requests are not browser forms (Twilio signs its webhooks)."""
NO_USER_BLUEPRINTS = frozenset({"telephony", "health"})
"""Blueprints that never look at users, so their requests skip the user lookup entirely."""
API_BLUEPRINT = "api"
API_PREFIX = "/api/"
BACKGROUND_HEADER = "X-Painline-Background"
"""Sent by the queue page's own refreshes: such a request is served but is not activity."""
EVENT_STREAM = "text/event-stream"


P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class CurrentUser:
    """The signed-in user as the views see it (a plain value: no lazy loading after the session closes)."""

    id: int
    username: str
    role: str
    via_token: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def can_change(self) -> bool:
        """False for auditors: templates hide buttons with it; the server refuses regardless."""
        return self.role in ACTORS

    def has_role(self, *roles: str) -> bool:
        """Whether this user may use a route limited to ``roles`` (an admin may use every route)."""
        return self.role == ADMIN or self.role in roles


# ---------------------------------------------------------------------------------------------------
# wiring


def init_app(app: Flask) -> None:
    """Cookie settings, the per-request user and CSRF checks, and the template helpers.

    The idle timeout and the sign-in limits come from the app's
    :class:`~dashboard.config.DashboardConfig`, read per request.
    """
    app.config.update(
        SESSION_COOKIE_NAME="painline_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.session_interface = RedisSessionInterface()
    app.before_request(_load_current_user)
    app.before_request(_check_csrf)
    app.before_request(_refuse_auditor_changes)
    app.after_request(_no_store_for_signed_in)
    app.add_template_global(csrf_token)
    app.context_processor(lambda: {"current_user": g.get("current_user")})
    app.register_error_handler(HTTPException, _json_errors_under_api)


def _sessions() -> sessionmaker[Session]:
    return current_app.extensions["painline.sessions"]


def _is_api_request() -> bool:
    return request.blueprint == API_BLUEPRINT or request.path.startswith(API_PREFIX)


def json_error(status: int, error: str, message: str, **headers: str) -> ResponseReturnValue:
    """The API's error body: ``{"error": <machine code>, "message": <for people>}``."""
    response = jsonify({"error": error, "message": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def _json_errors_under_api(exc: HTTPException) -> Any:
    """API clients get JSON errors (404 for an unknown route, 405, ...); pages keep werkzeug's HTML."""
    if not request.path.startswith(API_PREFIX):
        return exc
    code = exc.code or 500
    name = (exc.name or "error").lower().replace(" ", "_")
    return json_error(code, name, exc.description or exc.name or "error")


# ---------------------------------------------------------------------------------------------------
# the current user


def _load_current_user() -> None:
    """Put ``g.current_user`` (a :class:`CurrentUser` or None) in place for this request."""
    g.current_user = None
    g.auth_method = None
    endpoint = request.endpoint or ""
    if request.blueprint in NO_USER_BLUEPRINTS or endpoint == "static" or endpoint.endswith(".static"):
        return
    if _is_api_request() and "Authorization" in request.headers:
        g.auth_method = "token"
        g.current_user = _user_from_bearer(request.headers.get("Authorization", ""))
        return
    user_id = session.get("user_id")
    if user_id is None:
        return
    current = _server_session()
    now = time.time()
    if now - current.last_active > config_of().idle_timeout_s:
        _end_session(current, user_id)
        g.session_expired = True
        with session_scope(_sessions()) as db:
            user = db.get(User, user_id)
            record(db, user.username if user is not None else "unknown", "auth.session_expired", "user", user_id)
        return
    with session_scope(_sessions()) as db:
        user = db.get(User, user_id)
        if user is None or not user.active:
            _end_session(current, user_id)
            return
        g.current_user = CurrentUser(user.id, user.username, user.role)
    g.auth_method = "session"
    if not is_background_request():
        current.touch(now)


def is_background_request() -> bool:
    """Whether this request was made by a page on its own (refresh, event stream), not by a person."""
    return BACKGROUND_HEADER in request.headers or request.accept_mimetypes.best == EVENT_STREAM


def _server_session() -> ServerSession:
    current = session._get_current_object()  # type: ignore[attr-defined]
    assert isinstance(current, ServerSession)
    return current


def _end_session(current: ServerSession, user_id: int) -> None:
    """Revoke this one session (idle, or its account gone or inactive) and forget it for this request."""
    if current.session_id is not None:
        try:
            store_of(current_app).revoke(current.session_id, user_id)
        except RedisError:
            log.warning("could not revoke a session: Redis error")
    current.forget()


def revoke_user_sessions(store: SessionStore, user_id: int) -> int:
    """End every session of ``user_id`` (sign-out, password change, deactivation); returns how many."""
    return store.revoke_user(user_id)


def _user_from_bearer(header: str) -> CurrentUser | None:
    """The active user owning the unrevoked token in ``Authorization: Bearer <token>``, else None."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    with session_scope(_sessions()) as db:
        row = db.execute(
            select(User)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == hash_api_token(token), ApiToken.revoked_at.is_(None))
        ).scalar_one_or_none()
        if row is None or not row.active:
            return None
        return CurrentUser(row.id, row.username, row.role, via_token=True)


def current_user() -> CurrentUser | None:
    return g.get("current_user")


# ---------------------------------------------------------------------------------------------------
# CSRF


def csrf_token() -> str:
    """This session's CSRF token (created on first use); templates put it in every form."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = new_csrf_token()
        session[CSRF_FIELD] = token
    return token


def _check_csrf() -> ResponseReturnValue | None:
    if request.method not in UNSAFE_METHODS:
        return None
    if request.blueprint in CSRF_EXEMPT_BLUEPRINTS or g.get("auth_method") == "token":
        return None
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if tokens_match(session.get(CSRF_FIELD), given):
        return None
    log.info("refused a %s to %s without a valid CSRF token", request.method, request.path)
    if _is_api_request():
        return json_error(400, "csrf", "missing or invalid CSRF token")
    abort(400, description="The form was missing its security token or it had expired. Reload the page and try again.")
    return None  # pragma: no cover


def _refuse_auditor_changes() -> ResponseReturnValue | None:
    """Auditors are read-only everywhere; only signing out is a change they may make."""
    user = current_user()
    if user is None or user.role != AUDITOR or request.method not in UNSAFE_METHODS:
        return None
    if request.endpoint == "auth.logout":
        return None
    if _is_api_request():
        return json_error(403, "forbidden", "auditors have read-only access")
    abort(403)
    return None  # pragma: no cover


def _no_store_for_signed_in(response: Any) -> Any:
    """Pages and API answers with patient data must not linger in shared or back-button caches."""
    if g.get("current_user") is not None:
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# ---------------------------------------------------------------------------------------------------
# route guards


def require_role(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R | ResponseReturnValue]]:
    """Page guard: not signed in -> redirect to the login page; signed in without the role -> 403.

    An admin passes every guard. ``@require_role(*VIEWERS)`` opens a page to every signed-in role.
    """

    def decorate(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
        @wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
            user = current_user()
            if user is None:
                if g.get("session_expired"):
                    flash("You were signed out after a period of inactivity.", "info")
                return redirect(url_for("auth.login", next=_request_path()))
            if not user.has_role(*roles):
                _audit_refusal(user)
                abort(403)
            return view(*args, **kwargs)

        return guarded

    return decorate


def require_api_role(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R | ResponseReturnValue]]:
    """API guard: a bearer token or a signed-in session; 401 JSON without either, 403 JSON for the role."""

    def decorate(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
        @wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
            user = current_user()
            if user is None:
                return json_error(
                    401,
                    "unauthorized",
                    "a valid bearer token or a signed-in session is required",
                    **{"WWW-Authenticate": 'Bearer realm="painline"'},
                )
            if not user.has_role(*roles):
                _audit_refusal(user)
                return json_error(403, "forbidden", f"this needs one of the roles: {', '.join(roles)}")
            return view(*args, **kwargs)

        return guarded

    return decorate


def _request_path() -> str:
    query = request.query_string.decode("utf-8", "replace")
    return request.path + (f"?{query}" if query else "")


def _audit_refusal(user: CurrentUser) -> None:
    with session_scope(_sessions()) as db:
        endpoint = request.endpoint or request.path
        record(db, user.username, "auth.access_denied", "route", endpoint, method=request.method)


# ---------------------------------------------------------------------------------------------------
# sign-in and sign-out


def _limiter() -> LoginLimiter:
    secret = current_app.secret_key or ""
    key = secret if isinstance(secret, bytes) else str(secret).encode("utf-8")
    config = config_of()
    return LoginLimiter(
        redis=current_app.extensions["painline.redis"],
        key=key,
        namespace=config.key_namespace,
        limit=config.login_limit,
        address_limit=config.login_address_limit,
        user_limit=config.login_user_limit,
        window_s=config.login_window_s,
    )


def _client_address() -> str:
    """The client's address: the socket's, or (behind ``PAINLINE_TRUSTED_PROXIES``) the one ProxyFix took
    from ``X-Forwarded-For``."""
    return request.remote_addr or "unknown"


def _render_login(
    error: str | None = None, status: int = 200, username: str = "", headers: dict[str, str] | None = None
) -> ResponseReturnValue:
    next_url = safe_next_url(request.values.get("next"), "")
    return render_template("auth/login.html", error=error, next_url=next_url, username=username), status, headers or {}


@bp.get("/login")
def login() -> ResponseReturnValue:
    if current_user() is not None:
        return redirect(safe_next_url(request.args.get("next"), "/"))
    return _render_login()


@bp.post("/login")
def login_post() -> ResponseReturnValue:
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    address = _client_address()
    limiter = _limiter()
    try:
        admission = limiter.admit(username, address)
    except RedisError:
        # without the counters there is no brute-force protection, so sign-in waits for Redis
        log.warning("sign-in limiter unavailable: Redis error")
        return _render_login("Sign-in is temporarily unavailable. Try again shortly.", 503, username)
    if not admission.admitted:
        with session_scope(_sessions()) as db:
            limit = admission.refused_by.value if admission.refused_by is not None else "-"
            record(db, "anonymous", "auth.login_throttled", "user", "-", limit=limit)
        wait = admission.retry_after_s
        # the clock shows whole minutes: round up, so "after 14:03" is never too early
        retry_at = datetime.now(UTC) + timedelta(seconds=wait + 59)
        message = f"Too many sign-in attempts. Try again in {duration(wait)} (after {deployment_clock(retry_at)})."
        return _render_login(message, 429, username, {"Retry-After": str(wait)})

    with session_scope(_sessions()) as db:
        user = db.execute(select(User).where(User.username == username)).scalar_one_or_none() if username else None
        ok = verify_password(user.password_hash if user is not None else None, password)
        if not ok or user is None or not user.active:
            if user is None:
                record(db, "anonymous", "auth.login_failed", "user", "-", reason="unknown_user")
            else:
                reason = "bad_password" if not ok else "inactive"
                record(db, user.username, "auth.login_failed", "user", user.id, reason=reason)
            failed = True
        else:
            record(db, user.username, "auth.login", "user", user.id)
            signed_in = CurrentUser(user.id, user.username, user.role)
            failed = False
    if failed:
        return _render_login("Unknown username or wrong password.", 401, username)

    store = store_of(current_app)
    current = _server_session()
    now = time.time()
    try:
        limiter.succeeded(username, address)
        # a fresh session under a fresh id: nothing from before sign-in (its id, its CSRF token) carries
        # over, so an id planted in the browser beforehand is worth nothing
        if current.session_id is not None:
            store.revoke(current.session_id)
        fresh = SessionRecord(user_id=signed_in.id, csrf_token=new_csrf_token(), created_at=now, last_active=now)
        session_id = store.create(fresh)
    except RedisError:
        log.warning("session store unavailable: Redis error")
        return _render_login("Sign-in is temporarily unavailable. Try again shortly.", 503, username)
    current.forget()
    current.session_id = session_id
    current.created_at = current.last_active = now
    current["user_id"] = signed_in.id
    current[CSRF_FIELD] = fresh.csrf_token
    return redirect(safe_next_url(request.form.get("next"), "/"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    user = current_user()
    current = _server_session()
    if user is not None and not user.via_token:
        # every session of the user, not just this one: a copy of this cookie, or a forgotten tab on
        # another station, must not outlive the sign-out
        try:
            revoked = revoke_user_sessions(store_of(current_app), user.id)
        except RedisError:
            log.warning("could not revoke sessions at sign-out: Redis error")
            return _render_login("Sign-out could not be completed. Try again shortly.", 503)
        with session_scope(_sessions()) as db:
            record(db, user.username, "auth.logout", "user", user.id, sessions=revoked)
    elif current.session_id is not None:
        with contextlib.suppress(RedisError):
            store_of(current_app).revoke(current.session_id)
    current.forget()
    if _is_api_request() or request.accept_mimetypes.best == "application/json":
        return jsonify({"signed_out": True})
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))


__all__ = [
    "ACTORS",
    "ADMIN",
    "AUDITOR",
    "BACKGROUND_HEADER",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "NURSE",
    "VIEWERS",
    "CurrentUser",
    "bp",
    "csrf_token",
    "current_user",
    "init_app",
    "is_background_request",
    "json_error",
    "require_api_role",
    "require_role",
    "revoke_user_sessions",
]
