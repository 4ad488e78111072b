"""Error answers: pages in the site's layout with a way back, JSON under ``/api/``.

Why: werkzeug's bare error pages left a nurse who followed a stale link, or an admin whose filter was
refused, on a page with no navigation and no explanation (issue 13). Every HTTP error a page
request ends in (400 to 505, including an unhandled exception's 500) is rendered with
``error.html`` in the base layout: what happened, the refused field when a query parameter was wrong
(:class:`dashboard.params.InvalidParameter`), a link back to the triage queue, a link back to the
page the request concerned where there is one (the patient after a refused upload), and sign-in
when nobody is signed in.

Handlers are registered per status code, which Flask prefers over the class-wide ``HTTPException``
handler of :mod:`dashboard.auth`; so API paths are answered here in the API's JSON shape too
(``{"error", "message"}``, as :func:`dashboard.auth.json_error`). Twilio's and the health check's
routes keep werkzeug's plain answers: no person reads those.

A 500 page says nothing about the exception (Flask has already logged it with its traceback).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus

from flask import Flask, current_app, g, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, default_exceptions

from dashboard.auth import json_error
from dashboard.params import InvalidParameter
from dashboard.store.base import Invalid

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
PLAIN_BLUEPRINTS = frozenset({"telephony", "health"})
"""Blueprints answered by machines (Twilio, load balancers): their errors stay werkzeug's."""


@dataclass(frozen=True)
class ErrorText:
    title: str
    explanation: str


TEXTS: dict[HTTPStatus, ErrorText] = {
    HTTPStatus.BAD_REQUEST: ErrorText("Request refused", "Something in the request could not be used."),
    HTTPStatus.UNAUTHORIZED: ErrorText("Sign-in needed", "Sign in to see this page."),
    HTTPStatus.FORBIDDEN: ErrorText(
        "Not allowed", "Your account's role does not include this page or action. Ask an administrator if it should."
    ),
    HTTPStatus.NOT_FOUND: ErrorText(
        "Page not found", "There is nothing at this address: the link may be out of date, or the record was removed."
    ),
    HTTPStatus.METHOD_NOT_ALLOWED: ErrorText("Not possible here", "This address does not take that kind of request."),
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ErrorText("Upload too large", "The request was larger than allowed."),
    HTTPStatus.TOO_MANY_REQUESTS: ErrorText("Too many requests", "Wait a minute and try again."),
    HTTPStatus.INTERNAL_SERVER_ERROR: ErrorText(
        "Something went wrong",
        "The error has been logged. Nothing you typed was saved by this request; try again, and tell an "
        "administrator if it keeps happening.",
    ),
}


@dataclass(frozen=True)
class Link:
    url: str
    text: str


def _is_api() -> bool:
    return request.path.startswith(API_PREFIX)


def _size(n: int) -> str:
    """``32 MiB`` / ``4 KiB``: limits as people read them."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _back_link() -> Link | None:
    """The page this request concerned, when it has one to go back to."""
    args = request.view_args or {}
    if request.endpoint and request.endpoint.startswith("admin.") and "patient_id" in args:
        return Link(url_for("admin.patient", patient_id=args["patient_id"]), "Back to the patient's baseline page")
    if "call_id" in args and request.endpoint != "nurse.call":
        return Link(url_for("nurse.call", call_id=args["call_id"]), "Back to the call")
    return None


def render_error(
    status: HTTPStatus,
    message: str | None = None,
    *,
    parameter: InvalidParameter | None = None,
    back: Link | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> ResponseReturnValue:
    """The error page for ``status`` (a plain-text answer if even the page fails to render)."""
    text = TEXTS.get(status, ErrorText(status.phrase, status.description or status.phrase))
    signed_out = g.get("current_user") is None
    sign_in = None
    if signed_out:
        target = request.full_path.rstrip("?") if request.method == "GET" else None
        sign_in = url_for("auth.login", next=target) if target else url_for("auth.login")
    try:
        body = render_template(
            "error.html",
            status=status,
            text=text,
            message=message,
            parameter=parameter,
            back=back,
            sign_in=sign_in,
        )
    except Exception:  # the layout itself failed (a broken template, a dead session store): still answer
        log.exception("error page for %s could not be rendered", int(status))
        body = f"{int(status)} {text.title}. {text.explanation}"
        return body, int(status), [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
    return body, int(status), headers or []


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    code = exc.code or 500
    if _is_api():
        name = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description if code < 500 else "the server could not complete the request"
        return json_error(code, name, message or name)
    if request.blueprint in PLAIN_BLUEPRINTS:
        return exc
    try:
        status = HTTPStatus(code)
    except ValueError:  # a code werkzeug knows and http.HTTPStatus does not
        status = HTTPStatus.BAD_REQUEST if code < 500 else HTTPStatus.INTERNAL_SERVER_ERROR
    # werkzeug's stock description is generic; one a view gave with abort(code, description=...) is specific
    given = exc.description if exc.description != type(exc).description and code < 500 else None
    back = _back_link()
    if status is HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        what = "Nothing was enrolled" if request.endpoint == "admin.enrol" else "Nothing was changed"
        size = f"the {_size(int(limit))} limit" if limit else "the limit"
        given = f"The upload is larger than {size}. {what}: send fewer or shorter recordings at a time."
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return render_error(status, given, back=back, headers=headers)


def _invalid(exc: Invalid) -> ResponseReturnValue:
    """A Store or parameter refusal that reached the app: a 400 naming the field (the API has its own handler)."""
    if _is_api():
        return json_error(400, "invalid", str(exc))
    if isinstance(exc, InvalidParameter):
        back = Link(request.path, "Back to this page without the filters") if request.method == "GET" else None
        return render_error(HTTPStatus.BAD_REQUEST, parameter=exc, back=back or _back_link())
    return render_error(HTTPStatus.BAD_REQUEST, str(exc), back=_back_link())


def init_app(app: Flask) -> None:
    """Register the handlers app-wide (blueprint handlers, such as the API's, still come first)."""
    for code in default_exceptions:
        if code >= 400:
            app.register_error_handler(code, _http_error)
    app.register_error_handler(Invalid, _invalid)


__all__ = ["Link", "init_app", "render_error"]
