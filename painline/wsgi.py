"""The WSGI entry point for production servers: ``gunicorn -k gthread --threads 64 'painline.wsgi:app'``.

Settings come from the environment (``PAINLINE_*``, ``TWILIO_AUTH_TOKEN``). Each open Media Stream
holds one gunicorn thread for the length of the call (flask-sock reads the socket in the request
thread), so size ``--threads`` above the peak number of simultaneous calls per worker process.
"""

from __future__ import annotations

import logging
import os

from painline.app import create_app

logging.basicConfig(level=os.environ.get("PAINLINE_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app()
