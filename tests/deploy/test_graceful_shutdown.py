"""The receiver drains in-flight requests on SIGTERM (what Kubernetes and compose send on stop).

The in-flight request is a real one: GET /readyz waiting on Redis, held up with CLIENT PAUSE on a
private redis-server, so it is inside the app when SIGTERM arrives.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from workers.sandbox.redis_server import RedisServer, free_port


def _cli() -> str:
    found = shutil.which("workfloo-bridge", path=str(Path(sys.executable).parent))
    assert found, "workfloo-bridge console script is not installed"
    return found


@contextmanager
def receiver(redis_url: str, graceful_seconds: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()  # the internal listener, where /readyz answers
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "BRIDGE_REDIS_TIMEOUT_SECONDS": "10",
        "BRIDGE_INTAKE_TIMEOUT_SECONDS": "10",  # readiness waits on the paused Redis instead of 503
        "BRIDGE_GRACEFUL_SHUTDOWN_SECONDS": str(graceful_seconds),
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [_cli(), "serve", "--port", str(free_port()), "--internal-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "receiver did not become ready"
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def _start_readyz(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: bridge\r\n\r\n")
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def pausable_redis() -> Iterator[tuple[RedisServer, redis.Redis]]:
    with RedisServer() as server:
        client = redis.Redis(port=server.port)
        yield server, client
        client.close()


def test_sigterm_lets_the_in_flight_request_finish_and_refuses_new_connections(
    pausable_redis: tuple[RedisServer, redis.Redis],
) -> None:
    server, admin = pausable_redis
    with receiver(server.url, graceful_seconds=10) as (proc, port):
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        in_flight = _start_readyz(port)
        time.sleep(0.3)  # the request is now inside the app, waiting for Redis
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None, "the receiver quit with a request in flight"
        assert _refused(port), "new connections must be refused once shutdown has begun"
        response = _read_all(in_flight)
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert b'"status":"ready"' in response
        # uvicorn re-raises the SIGTERM it captured once draining is done, so the exit is "by SIGTERM".
        assert proc.wait(timeout=15) == -signal.SIGTERM


def test_the_drain_is_bounded_by_the_graceful_shutdown_setting(
    pausable_redis: tuple[RedisServer, redis.Redis],
) -> None:
    server, admin = pausable_redis
    with receiver(server.url, graceful_seconds=1) as (proc, port):
        admin.execute_command("CLIENT", "PAUSE", "6000", "ALL")
        in_flight = _start_readyz(port)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # With a 1 s budget the process gives up on the request long before Redis answers (6 s).
        proc.wait(timeout=4.5)
        response = _read_all(in_flight)
        assert not response.startswith(b"HTTP/1.1 200"), response[:200]
