"""Security headers on every response the web process sends: pages, the JSON API, static files, errors.

Why on everything rather than on pages only: an error page, a JSON body or a stylesheet rendered
as HTML by a sniffing browser, or framed by another site, is as much an opening as a page is. One
``after_request`` hook sees every response Flask finishes, including those of error handlers and of
unhandled exceptions.

The Content-Security-Policy allows only this origin's scripts and styles: no inline ``<script>``,
no ``style="..."`` attributes, no ``javascript:`` URLs, no ``eval``. The pages are built for it
(the charts are inline SVG coloured by classes from ``static/painline.css``; the queue's live
updates are ``static/live.js``), so a script injected into a page through some future escaping bug
would not run. ``img-src data:`` is kept for SVG and favicon data URLs; ``connect-src`` falls back
to ``'self'``, which is where the queue's ``fetch`` and ``EventSource`` go.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.wrappers import Response

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    )
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # frame-ancestors for browsers that predate it
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # URLs carry patient and call ids: they must not leak to any other site. "same-origin" rather than
    # "no-referrer" because the latter also makes browsers send "Origin: null" on our own form posts,
    # which would defeat any Origin check on them
    "Referrer-Policy": "same-origin",
    # the dashboard never needs these; denying them means an injected script could not ask either
    "Permissions-Policy": "microphone=(), camera=(), geolocation=(), payment=(), usb=()",
}


def add_security_headers(response: Response) -> Response:
    """Set every header in :data:`SECURITY_HEADERS`, replacing any a view set on its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    """Install the hook on ``app``: app-level, so it covers every blueprint, static files and errors."""
    app.after_request(add_security_headers)


__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "add_security_headers", "init_app"]
