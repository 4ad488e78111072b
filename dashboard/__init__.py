"""The nurse and admin web UI and the JSON API (server-rendered Flask blueprints, no build step).

It reads and changes the database through ``schema`` and listens to the worker's flags on the
Redis channel; it never imports ``telephony`` or ``worker`` (work for workers is enqueued by name).
"""

from __future__ import annotations

from flask import Flask

from dashboard.config import DashboardConfig, configure


def init_app(app: Flask, config: DashboardConfig) -> None:
    """Register every UI blueprint on an app built by :func:`painline.app.create_app`."""
    from dashboard import admin, api, auth, errors, headers, live, nurse

    configure(app, config)
    live.stopping_event(app)  # created before any stream can ask for it
    headers.init_app(app)  # security headers on every response, errors and static files included
    errors.init_app(app)  # error pages in the layout; JSON under /api/

    # ``<id:...>`` in every blueprint's routes: ids beyond PostgreSQL's integer are a 404, not a 500
    app.url_map.converters.setdefault("id", api.RowIdConverter)
    auth.init_app(app)
    for module in (auth, nurse, admin, api):
        app.register_blueprint(module.bp)
