"""Helpers shared by the resilience tests: raw sockets for abuse that no HTTP client would send, and Redis
bookkeeping (the receiver itself is served by the ``serve_receiver`` fixture, as `workfloo-bridge serve`
serves it)."""

from __future__ import annotations

import socket
import time
from typing import Any

import redis

from workers.core.settings import Settings, load_settings

KEY = "cb-b0ba2fd777ed0874ed4efdb9611ae9c137df2acd"
AUTH = {"x-api-key": KEY}


def receiver_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_url, "bridge_callback_keys": KEY}
    values.update(overrides)
    return load_settings(**values)


def queue_length(client: redis.Redis, queue: str = "workfloo") -> int:
    return int(client.llen(f"rq:queue:{queue}"))


def job_count(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter("rq:job:*", count=1000))


def raw_exchange(
    port: int,
    chunks: list[bytes],
    *,
    pause: float = 0.0,
    read_timeout: float = 10.0,
    stop_after_response: bool = False,
) -> tuple[bytes, bool, float]:
    """Send ``chunks`` (``pause`` s apart) on one connection and read until the server closes it or
    ``read_timeout`` passes (or, with ``stop_after_response``, until one whole response is in).
    Returns (everything received, closed by the server, seconds taken). A send
    that fails because the server already closed counts as closed."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass
        deadline = time.monotonic() + read_timeout
        closed = False
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            received += data
            if stop_after_response and _complete_response(received):
                break
    return received, closed, time.monotonic() - started


def _complete_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int | None:
    """Status code of the first HTTP response in ``response`` (None if there is none)."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])
