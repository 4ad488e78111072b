"""``painline stream``'s server (:mod:`telephony.stream_server`) on its own event loop in a test thread.

The socket tests run against both homes of ``/twilio/stream``: the Flask route and this server. The
webhooks stay on the Flask app; the stream server gets the same telephony config, so a handshake is
signed for the same public URL whichever port the test connects to.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

from rq import Queue
from sqlalchemy.orm import Session

from telephony.config import TelephonyConfig
from telephony.stream_server import StreamServer, StreamServerOptions


@contextlib.contextmanager
def running_stream_server(
    sessions: Callable[[], Session],
    queue: Queue | None,
    config: TelephonyConfig,
    options: StreamServerOptions | None = None,
) -> Iterator[StreamServer]:
    """Serve on 127.0.0.1 (a free port unless ``options`` says otherwise) until the block ends."""
    options = options or StreamServerOptions(host="127.0.0.1", port=0, drain_s=0.0)
    loop = asyncio.new_event_loop()
    server = StreamServer(sessions, queue, config, options)
    stop = asyncio.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    async def main() -> None:
        try:
            await server.start()
        except BaseException as exc:
            failed.append(exc)
            ready.set()
            raise
        ready.set()
        await server.run_until(stop)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="stream-server", daemon=True)
    thread.start()
    ready.wait(timeout=10)
    if failed:
        raise failed[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
