"""Slow and abusive clients against the guarded protocol, with raw sockets on loopback: each test is one
attack shape, at its real size, with the deadlines scaled down by settings."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.receiver.conftest import KEY, NIP_PATH, receiver_settings
from workers.sandbox.serving import ServerThread

HEADER_TIMEOUT = 1.0
REQUEST_DEADLINE = 2.0
BODY_TIMEOUT = 3.0  # the app's own body deadline, longer than the request's
MAX_CONNECTIONS = 20
GOOD = b'{"event":"SENT","date":"2026-11-22T23:00:00Z","linkId":null}'


@pytest.fixture
def port(serve_receiver: Callable[..., ServerThread], redis_url: str) -> int:
    settings = receiver_settings(
        redis_url,
        bridge_header_read_timeout_seconds=HEADER_TIMEOUT,
        bridge_request_deadline_seconds=REQUEST_DEADLINE,
        bridge_body_read_timeout_seconds=BODY_TIMEOUT,
        bridge_max_connections=MAX_CONNECTIONS,
    )
    return serve_receiver(settings).port


def _head(key: str, length: int, extra: bytes = b"") -> bytes:
    return (
        f"POST {NIP_PATH} HTTP/1.1\r\nhost: bridge\r\nx-api-key: {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n".encode()
        + extra
        + b"\r\n"
    )


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``seconds`` pass (False)."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return received, False
        except OSError:
            return received, True
        if not data:
            return received, True
        received += data
    return received, False


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_an_early_401_closes_the_connection_instead_of_waiting_for_the_body(
    port: int, sockets: list[socket.socket]
) -> None:
    """Wrong key, 1 MB announced, a few bytes sent: the 401 comes at once, and so does the close (the
    client trickling the rest held the connection for as long as it liked)."""
    for _ in range(MAX_CONNECTIONS - 2):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(_head("wrong-key", 1_000_000) + b'{"event"')
        sockets.append(sock)
    held = 0
    for sock in sockets:
        received, closed = _closed_within(sock, 1.0)
        assert received.startswith(b"HTTP/1.1 401"), received[:80]
        assert b"connection: close" in received.lower()
        held += not closed
    assert held == 0, f"{held} of {len(sockets)} unauthenticated connections still open"


def test_one_deadline_spans_headers_and_body(port: int) -> None:
    """Headers just inside their allowance, then the body just inside its own: the request as a whole
    is past its deadline, so 408 and close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = _head(KEY, len(GOOD))
        started = time.monotonic()
        sock.sendall(head[:20])
        time.sleep(HEADER_TIMEOUT * 0.8)
        sock.sendall(head[20:])  # headers complete before their deadline
        received, closed = b"", False
        for byte in GOOD:  # one byte every 0.2 s: the whole body would take 12 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            received, closed = _closed_within(sock, 0.2)
            if closed or received:
                break
        if not closed:
            more, closed = _closed_within(sock, 1.0)
            received += more
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408"), received[:80]
    assert closed and elapsed < REQUEST_DEADLINE + 1.0


def test_the_header_cap_holds_when_the_headers_arrive_in_one_read(port: int) -> None:
    """100 KB of headers in one send (answered 200 when the cap only counted chunks seen mid-headers)."""
    padding = b"".join(b"x-pad-%04d: %s\r\n" % (n, b"y" * 90) for n in range(1000))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_head(KEY, len(GOOD), padding) + GOOD)
        received, closed = _closed_within(sock, 3.0)
    assert received.startswith(b"HTTP/1.1 431"), received[:80]
    assert closed


def test_connections_beyond_the_limit_are_refused_at_once(port: int, sockets: list[socket.socket]) -> None:
    for _ in range(MAX_CONNECTIONS):
        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    time.sleep(0.2)  # the server has accepted them all
    extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    sockets.extend(extra)
    for sock in extra:
        received, closed = _closed_within(sock, 1.0)
        assert received.startswith(b"HTTP/1.1 503") and closed, received[:80]
    for sock in sockets[:MAX_CONNECTIONS]:
        sock.close()
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_head(KEY, len(GOOD)) + GOOD)
        received, _ = _closed_within(sock, 1.0)
    assert received.startswith(b"HTTP/1.1 200"), received[:80]
