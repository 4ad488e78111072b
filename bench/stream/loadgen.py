"""The load generator: many Twilio-faithful calls at once, paced in real time, from asyncio.

One asyncio loop holds every call of a process (a thread per call would spend the generator's CPU
on switching, and the generator shares the machine with the server it measures). Each call does
what Twilio does, with :mod:`painline.replay`'s pieces: the signed voice webhook, the TwiML's
``<Stream>``, the signed WebSocket handshake, ``connected`` / ``start`` / one ``media`` message every
20 ms / ``stop``, and the signed ``stream-started`` / ``stream-stopped`` status callbacks.

Twilio's buffer, modelled. Twilio cannot hold a call's audio for ever while the server reads too
slowly: a frame whose write cannot *start* within :data:`DISCARD_AFTER_S` of its due time is
discarded and counted (error 31930 in Twilio's words). The client socket's send buffer and the
transport's write buffer are kept small so a slow reader is felt within about a second, as it would be
by Twilio, instead of disappearing into megabytes of loopback buffering.

The generator's own lateness is recorded too (how late its sends started when nothing was blocking
them), so a run the generator could not drive is reported as such and not blamed on the server.
Larger runs are spread over several processes (:func:`run_processes`), each with its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import psutil

from bench.stream.calls import EncodedCall, encode_call
from painline.replay import (
    DEFAULT_FROM,
    DEFAULT_TO,
    ReplayError,
    StreamInstruction,
    check_voice_answer,
    connect_url,
    form_headers,
    handshake_headers,
    reroute,
    stream_status_params,
    voice_webhook_params,
    voice_webhook_urls,
)
from telephony.stream_stats import LagHistogram

FRAME_S = 0.020
DISCARD_AFTER_S = 1.0
"""A frame whose write cannot start this long after it was due is discarded, as Twilio discards it."""
SEND_BUFFER_BYTES = 8 * 1024  # the kernel doubles it: ~1 s of media messages in flight at most
WRITE_HIGH_WATER = 4 * 1024  # aiohttp waits for the socket beyond this (default 64 KiB: 4 s of audio)
BLOCKED_S = 0.020  # a send that took longer than this was held back by the server (backpressure)
HTTP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GeneratorConfig:
    base_url: str
    public_url: str
    auth_token: str
    status_callbacks: bool = True
    stream_base_url: str | None = None  # `painline stream` on an address of its own (no proxy in front)


@dataclass(frozen=True)
class CallSpec:
    """Call ``index`` starts ``offset_s`` after the run's start and streams ``duration_s`` of audio."""

    index: int
    offset_s: float
    duration_s: float


@dataclass
class CallResult:
    index: int
    actor: str
    call_sid: str
    audio_s: float
    frames_total: int
    frames_sent: int = 0
    discarded_backpressure: int = 0  # Twilio's buffer overflowed because the server read too slowly
    discarded_generator: int = 0  # the generator itself fell a second behind (not the server's fault)
    t0_wall: float = 0.0  # wall-clock due time of media frame 0 (time.time())
    webhook_ms: float = 0.0
    handshake_ms: float = 0.0
    close_code: int | None = None
    error: str | None = None
    blocked_sends: int = 0
    blocked_max_ms: float = 0.0
    lateness: dict[str, Any] = field(default_factory=dict)  # histogram of send start - due (ms), all frames
    wake_lateness: dict[str, Any] = field(default_factory=dict)  # only frames no blocked send delayed

    @property
    def discarded(self) -> int:
        return self.discarded_backpressure + self.discarded_generator


def _shrink_buffers(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Small kernel and transport send buffers, so backpressure reaches the sender within ~1 s."""
    connection = ws._response.connection  # aiohttp exposes the transport only through the connection
    transport = connection.transport if connection is not None else None
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    with contextlib.suppress(AttributeError, NotImplementedError):
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)


async def _post(
    session: aiohttp.ClientSession, url: str, signed_url: str, params: dict[str, str], auth_token: str
) -> tuple[int, str]:
    body = urllib.parse.urlencode(params)
    async with session.post(url, data=body, headers=form_headers(auth_token, signed_url, params)) as response:
        return response.status, await response.text()


async def _status(
    session: aiohttp.ClientSession, cfg: GeneratorConfig, instruction: StreamInstruction, call: EncodedCall, event: str
) -> None:
    if not (cfg.status_callbacks and instruction.status_callback):
        return
    params = stream_status_params(call.account_sid, call.call_sid, call.stream_sid, event)
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        await _post(
            session,
            reroute(instruction.status_callback, cfg.base_url),
            instruction.status_callback,
            params,
            cfg.auth_token,
        )


async def run_call(
    session: aiohttp.ClientSession, cfg: GeneratorConfig, call: EncodedCall, spec: CallSpec, start_mono: float
) -> CallResult:
    """One call from webhook to close (see the module docstring); never raises, errors are recorded."""
    loop = asyncio.get_running_loop()
    result = CallResult(
        index=call.index, actor=call.actor, call_sid=call.call_sid, audio_s=call.audio_s, frames_total=len(call.media)
    )
    lateness, wake = LagHistogram(), LagHistogram()
    delay = start_mono + spec.offset_s - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        began = loop.time()
        signed, reached = voice_webhook_urls(cfg.public_url, cfg.base_url)
        params = voice_webhook_params(call.account_sid, call.call_sid, DEFAULT_FROM, DEFAULT_TO)
        instruction = check_voice_answer(*await _post(session, reached, signed, params, cfg.auth_token))
        result.webhook_ms = (loop.time() - began) * 1000
        began = loop.time()
        ws = await session.ws_connect(
            connect_url(instruction.url, cfg.stream_base_url or cfg.base_url),
            autoping=True,
            compress=0,
            headers=handshake_headers(cfg.auth_token, instruction.url),
        )
        result.handshake_ms = (loop.time() - began) * 1000
    except (TimeoutError, aiohttp.ClientError, ReplayError, OSError) as exc:
        result.error = f"setup: {type(exc).__name__}: {exc}"[:300]
        return result
    status_tasks: list[asyncio.Task[None]] = []
    try:
        _shrink_buffers(ws)
        await ws.send_str(call.connected)
        await ws.send_str(call.start(instruction.parameters))
        status_tasks.append(asyncio.create_task(_status(session, cfg, instruction, call, "stream-started")))
        t0 = loop.time()
        result.t0_wall = time.time() - (loop.time() - t0)
        last_block_end = -1e9
        for i, message in enumerate(call.media):
            due = t0 + i * FRAME_S
            now = loop.time()
            if now < due:
                await asyncio.sleep(due - now)
                now = loop.time()
            late = now - due
            if late > DISCARD_AFTER_S:
                if now - last_block_end < DISCARD_AFTER_S:
                    result.discarded_backpressure += 1
                else:
                    result.discarded_generator += 1
                continue
            late_ms = late * 1000.0
            lateness.add(late_ms)
            if now - last_block_end > DISCARD_AFTER_S:
                wake.add(late_ms)
            await ws.send_str(message)
            result.frames_sent += 1
            took = loop.time() - now
            if took > BLOCKED_S:
                result.blocked_sends += 1
                result.blocked_max_ms = max(result.blocked_max_ms, took * 1000)
                last_block_end = loop.time()
        await ws.send_str(call.stop)
        with contextlib.suppress(asyncio.TimeoutError):
            while not ws.closed:
                msg = await ws.receive(timeout=15)
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    break
        result.close_code = ws.close_code
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        result.error = f"stream: {type(exc).__name__}: {exc}"[:300]
    finally:
        await ws.close()
        result.lateness = lateness.to_dict()
        result.wake_lateness = wake.to_dict()
    await _status(session, cfg, instruction, call, "stream-stopped")
    for task in status_tasks:
        with contextlib.suppress(Exception):
            await task
    return result


async def run_calls(
    cfg: GeneratorConfig, calls: list[EncodedCall], specs: list[CallSpec], start_wall: float
) -> list[CallResult]:
    """Every call of this process, concurrently; ``start_wall`` is the run's common start (time.time())."""
    loop = asyncio.get_running_loop()
    start_mono = loop.time() + (start_wall - time.time())
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=HTTP_TIMEOUT_S, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(
            await asyncio.gather(*(run_call(session, cfg, c, s, start_mono) for c, s in zip(calls, specs, strict=True)))
        )


@dataclass
class ProcessOutcome:
    results: list[CallResult]
    cpu_s: float  # the generator process's own CPU during the run


def run_processes(
    cfg: GeneratorConfig, specs: list[CallSpec], processes: int, *, lead_s: float = 2.0
) -> ProcessOutcome:
    """Split the calls round-robin over ``processes`` generator processes and run them together.

    Each process encodes its own calls first; the common start is set once all are ready, ``lead_s``
    ahead, so encoding never overlaps the measured run.
    """
    ctx = mp.get_context("fork")
    groups = [specs[i::processes] for i in range(processes) if specs[i::processes]]
    ready, out = ctx.Queue(), ctx.Queue()
    start_box = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_run_group, args=(cfg, g, start_box, ready, out), daemon=True) for g in groups]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=600)
    with start_box.get_lock():
        start_box.value = time.time() + lead_s
    results: list[CallResult] = []
    cpu = 0.0
    for _ in procs:
        items = out.get()
        cpu += float(items[-1]["cpu_s"])
        results += [CallResult(**item) for item in items[:-1]]
    for p in procs:
        p.join(timeout=30)
    results.sort(key=lambda r: r.index)
    return ProcessOutcome(results, cpu)


def _run_group(cfg: GeneratorConfig, specs: list[CallSpec], start_box: Any, ready: Any, out: Any) -> None:
    calls = [encode_call(s.index, s.duration_s) for s in specs]
    ready.put(len(calls))
    while start_box.value == 0.0:
        time.sleep(0.01)
    me = psutil.Process()
    before = me.cpu_times()
    results = asyncio.run(run_calls(cfg, calls, specs, start_box.value))
    after = me.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    out.put([asdict(r) for r in results] + [{"cpu_s": cpu}])


def ramp_specs(n: int, ramp_s: float, duration_s: float) -> list[CallSpec]:
    """``n`` calls started evenly over ``ramp_s`` seconds, each streaming ``duration_s``."""
    step = ramp_s / n if n > 1 else 0.0
    return [CallSpec(index=i, offset_s=i * step, duration_s=duration_s) for i in range(n)]
