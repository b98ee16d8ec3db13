"""Shared fixtures: a private redis-server for the session, a clean database per test, and a way to
serve any ASGI app over real HTTP on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from workers.core.crypto import generate_entry
from workers.core.settings import Settings
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import ServerThread, receiver_thread

# The receiver and the workers refuse to start without a data key: every test process (and every child
# it starts with this environment) has one, made fresh for the session.
TEST_DATA_KEYS = os.environ.setdefault("BRIDGE_DATA_KEYS", generate_entry("test"))

# Fixtures shared across test packages: the vendor fakes over HTTP and the process stacks.
pytest_plugins = ["tests.support.vendor_rigs", "tests.support.bridge_fixtures"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole test session, never the shared 6379 instance."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of a clean database: flushed before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop, kill or restart it."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """``serve(app)`` runs the ASGI app under uvicorn on a free loopback port until the test ends."""
    started: list[ServerThread] = []

    def _serve(app: Any, **config: Any) -> ServerThread:
        server = ServerThread(app, **config).start()
        started.append(server)
        return server

    yield _serve
    for server in reversed(started):
        server.stop()


@pytest.fixture
def serve_receiver() -> Iterator[Callable[..., ServerThread]]:
    """``serve_receiver(settings)`` runs the receiver as ``serve`` does (guarded protocol, two listeners on
    free loopback ports) until the test ends: ``url`` is the public listener, ``internal_url`` the other."""
    started: list[ServerThread] = []

    def _serve(settings: Settings, **config: Any) -> ServerThread:
        server = receiver_thread(settings, **config).start()
        started.append(server)
        return server

    yield _serve
    for server in reversed(started):
        server.stop()
