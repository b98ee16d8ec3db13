"""Fixtures for the receiver tests: settings pointing at the test Redis and a served receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from workers.core.settings import Settings, load_settings
from workers.sandbox.serving import ServerThread

KEY = "test-callback-key"
OLD_KEY = "old-callback-key"
EXECUTION_ID = "657118e1d511b6e54fe2a969"
NIP_PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
AUTH = {"x-api-key": KEY}


def receiver_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_url, "bridge_callback_keys": f"{KEY},{OLD_KEY}"}
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def start_receiver(serve: Callable[..., ServerThread]) -> Iterator[Callable[..., httpx.Client]]:
    """``start_receiver(redis_url, **settings)`` serves a fresh receiver app; returns a client for it."""
    clients: list[httpx.Client] = []

    def _start(redis_url: str, **overrides: Any) -> httpx.Client:
        server = serve(create_app(receiver_settings(redis_url, **overrides)))
        client = httpx.Client(base_url=server.url, timeout=10)
        clients.append(client)
        return client

    yield _start
    for client in clients:
        client.close()


@pytest.fixture
def receiver(start_receiver: Callable[..., httpx.Client], redis_url: str) -> httpx.Client:
    return start_receiver(redis_url)
