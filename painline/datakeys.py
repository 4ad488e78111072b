"""Install the data key ring (``PAINLINE_DATA_KEYS``) for this process: the composition root's half of
:mod:`schema.crypto`.

Every entry point that opens the database calls :func:`install_data_keys` before using it: the app
factory and the CLI (through :func:`painline.app.make_app_engine`), the worker context
(:func:`painline.workers.build_context`) and ``painline migrate``. Only this module turns settings
into keys, so ``analysis`` and the jobs never see a key.
"""

from __future__ import annotations

import logging

from painline.config import Settings
from schema.crypto import KeyRing, describe, install_key_ring

log = logging.getLogger(__name__)

_warned = False


def install_data_keys(settings: Settings) -> KeyRing | None:
    """Parse ``settings.data_keys`` and make it the process's key ring; returns the ring (None: no keys).

    Raises :class:`schema.crypto.DataKeyError` for a malformed key, so a typo stops the process at
    start-up instead of at the first write. Without keys, warns once per process: values are then
    stored unencrypted, which is meant for the embedded demo and tests only.
    """
    global _warned
    ring = KeyRing.parse(settings.data_keys)
    install_key_ring(ring)
    if ring is None and not _warned:
        log.warning("PAINLINE_DATA_KEYS is not set: %s; generate a key with 'painline keys generate'", describe(None))
        _warned = True
    return ring


__all__ = ["install_data_keys"]
