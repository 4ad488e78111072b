"""Reading a simple-websocket server in the caller's thread keeps the protocol behaviour intact.

A real ``simple_websocket.Server`` (started with ``NoReaderThread``, exactly as the app configures
it) on one end of a socket pair, a wsproto client on the other: messages in order, pings answered,
the close handshake, the size cap, idle timeouts and a vanished peer.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import simple_websocket
from simple_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Pong, Request, TextMessage

from telephony.inline_socket import InlineReader, NoReaderThread

CAP = 1024


class Client:
    """The Twilio side: a wsproto client over a plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = WSConnection(ConnectionType.CLIENT)

    def send(self, event: Event) -> None:
        self.sock.sendall(self.conn.send(event))

    def events(self) -> list[object]:
        self.sock.settimeout(2.0)
        self.conn.receive_data(self.sock.recv(65536))
        return list(self.conn.events())


@pytest.fixture
def pair() -> Iterator[tuple[InlineReader, simple_websocket.Server, Client]]:
    server_sock, client_sock = socket.socketpair()
    client = Client(client_sock)
    request = client.conn.send(Request(host="painline.test", target="/twilio/stream"))
    environ: dict[str, object] = {"werkzeug.socket": server_sock, "REQUEST_METHOD": "GET"}
    for line in request.decode().split("\r\n")[1:]:
        if ": " in line:
            key, value = line.split(": ", 1)
            environ["HTTP_" + key.upper().replace("-", "_")] = value
    box: dict[str, simple_websocket.Server] = {}
    thread = threading.Thread(
        target=lambda: box.setdefault(
            "ws", simple_websocket.Server(environ, max_message_size=CAP, thread_class=NoReaderThread)
        )
    )
    thread.start()
    accepted = client.events()
    thread.join(5)
    assert any(isinstance(e, AcceptConnection) for e in accepted)
    ws = box["ws"]
    try:
        yield InlineReader(ws), ws, client
    finally:
        server_sock.close()
        client_sock.close()


def test_messages_arrive_in_order_without_a_reader_thread(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, client = pair
    before = threading.active_count()
    for i in range(20):
        client.send(TextMessage(data=f'{{"n": {i}}}'))
    assert [reader.receive(timeout=2.0) for _ in range(20)] == [f'{{"n": {i}}}' for i in range(20)]
    assert threading.active_count() == before


def test_ping_is_answered_while_reading(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, client = pair
    client.send(Ping(payload=b"hi"))
    client.send(TextMessage(data="after ping"))
    assert reader.receive(timeout=2.0) == "after ping"
    assert any(isinstance(e, Pong) and e.payload == b"hi" for e in client.events())


def test_idle_timeout_returns_none(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, _ = pair
    assert reader.receive(timeout=0.2) is None


def test_peer_close_completes_the_handshake_and_raises(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, client = pair
    client.send(CloseConnection(code=1000, reason="bye"))
    with pytest.raises(ConnectionClosed):
        reader.receive(timeout=2.0)
    assert any(isinstance(e, CloseConnection) for e in client.events())


def test_vanished_peer_raises(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, client = pair
    client.sock.close()
    with pytest.raises(ConnectionClosed):
        reader.receive(timeout=2.0)


def test_oversized_message_is_refused_with_1009(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, client = pair
    client.send(TextMessage(data="x" * (CAP + 1)))
    with pytest.raises(ConnectionClosed):
        reader.receive(timeout=2.0)
    closes = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1009


def test_close_sends_the_code_and_releases_the_socket(pair: tuple[InlineReader, object, Client]) -> None:
    reader, _, client = pair
    reader.close(1008, "policy")
    closes = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1008
    client.sock.settimeout(2.0)
    assert client.sock.recv(10) == b""  # shut down: no reader thread is left to do it
