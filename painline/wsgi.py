"""The WSGI entry point for production servers: ``gunicorn -k gthread --threads 64 'painline.wsgi:app'``.

Settings come from the environment (``PAINLINE_*``, ``TWILIO_AUTH_TOKEN``). Each open Media Stream
holds one gunicorn thread for the length of the call (flask-sock reads the socket in the request
thread), so size ``--threads`` above the peak number of simultaneous calls per worker process.

On the embedded Redis (no ``PAINLINE_REDIS_URL``) add ``--config python:painline.gunicorn_conf``, as
``painline serve --gunicorn`` does: the master then holds the embedded server for the life of the
server, so it outlives workers that are restarted or killed and stops with the master (see
:mod:`painline.redis_conn`).
"""

from __future__ import annotations

import logging

from painline.app import create_app
from painline.config import Settings

settings = Settings.from_env()
logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app(settings)
