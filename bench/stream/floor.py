"""The receive floor: what an event loop and websockets cost per frame before painline does anything.

A server process that only receives (``painline stream``'s library and options: websockets,
no compression, no pings; on asyncio's own loop, and on uvloop when it is installed) and ``N`` paced client sockets in
this process, each sending one Twilio-sized media message every 20 ms (built by
:class:`painline.replay.StreamMessages`, numbered as a real stream numbers them). The server's CPU per frame
received is the floor under ``painline stream``'s per-frame cost; the difference to the ingest runs'
figure is painline's own work (the ceiling) plus what saving utterances costs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bench.soak.services import free_port

FRAME_S = 0.020


def _serve(loop_kind: str, port: int, settle_s: float, measure_s: float) -> None:
    """The server process: receive on every socket, print CPU per frame over ``measure_s`` as JSON."""
    from websockets.asyncio.server import ServerConnection, serve

    frames = 0

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def handler(connection: ServerConnection) -> None:
        nonlocal frames
        try:
            while True:
                await connection.recv()
                frames += 1
        except Exception:  # the client went away: this socket is done
            return

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, backlog=1024):
            print("ready", flush=True)
            await asyncio.sleep(settle_s)
            cpu0, frames0 = cpu(), frames
            await asyncio.sleep(measure_s)
            n = frames - frames0
            print(json.dumps({"frames": n, "us_per_frame": round((cpu() - cpu0) / max(n, 1) * 1e6, 2)}), flush=True)

    if loop_kind == "uvloop":  # not a dependency: imported only when measure() found it installed
        importlib.import_module("uvloop").run(main())
    else:
        asyncio.run(main())


async def _clients(port: int, calls: int, seconds: float) -> None:
    # imported here, not at the top: the server process runs this module too, and it should load only
    # what it measures (painline.replay brings scipy and doubles the objects its garbage collector walks)
    from painline.replay import CHUNK_BYTES, CHUNK_MS, StreamMessages, new_sid

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        # each socket is one stream: its own SIDs, sequenceNumber and chunk counting up, Twilio-sized payload
        builder = StreamMessages(account_sid=new_sid("AC"), call_sid=new_sid("CA"))
        payload = os.urandom(CHUNK_BYTES)
        async with session.ws_connect(f"http://127.0.0.1:{port}/", compress=0) as ws:
            loop = asyncio.get_running_loop()
            due = loop.time() + FRAME_S * index / calls  # spread the calls over one frame period
            end = due + seconds
            frame = 0
            while due < end:
                # built per frame on the client: only the server's CPU is measured
                message = json.dumps(builder.media(payload, frame * CHUNK_MS))
                await asyncio.sleep(max(0.0, due - loop.time()))
                await ws.send_str(message)
                frame += 1
                due += FRAME_S

    # the connector's default limit is 100 connections; every call needs its own
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session, i) for i in range(calls)))


def measure(calls: int = 150, measure_s: float = 15.0) -> dict[str, Any]:
    """CPU per received frame on each loop, ``calls`` paced sockets."""
    out: dict[str, Any] = {"calls": calls, "measure_s": measure_s, "library": "websockets", "loops": {}}
    for loop_kind in ("uvloop", "asyncio"):
        if loop_kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
            continue  # not a painline dependency (it did not lower the floor); measured when installed
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.stream.floor", loop_kind, str(port), "4", str(measure_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        started = time.monotonic()
        asyncio.run(_clients(port, calls, measure_s + 6))
        line = server.stdout.readline()
        server.wait(timeout=30)
        result = json.loads(line)
        result["frames_per_s"] = round(result["frames"] / measure_s, 1)
        result["wall_s"] = round(time.monotonic() - started, 1)
        out["loops"][loop_kind] = result
    return out


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
