"""Fixtures for the receiver tests: settings pointing at the test Redis and a served receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from workers.core.settings import Settings, load_settings
from workers.sandbox.serving import ServerThread

KEY = "cb-a1fe038d0be5823b57bc63bc900a89fe2e6ed61e"
OLD_KEY = "cb-old-a0b5c4f97a1bd29e2b2d5633aa5b12911d1eb2f0"
EXECUTION_ID = "657118e1d511b6e54fe2a969"
NIP_PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
AUTH = {"x-api-key": KEY}


def receiver_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_url, "bridge_callback_keys": f"{KEY},{OLD_KEY}"}
    values.update(overrides)
    return load_settings(**values)


class ReceiverClient(httpx.Client):
    """A client of the public listener; ``internal`` is one of the internal listener."""

    internal: httpx.Client


@pytest.fixture
def start_receiver(serve_receiver: Callable[..., ServerThread]) -> Iterator[Callable[..., ReceiverClient]]:
    """``start_receiver(redis_url, **settings)`` serves a fresh receiver; returns a client for it."""
    clients: list[httpx.Client] = []

    def _start(redis_url: str, **overrides: Any) -> ReceiverClient:
        server = serve_receiver(receiver_settings(redis_url, **overrides))
        client = ReceiverClient(base_url=server.url, timeout=10)
        client.internal = httpx.Client(base_url=server.internal_url, timeout=10)
        clients.extend([client, client.internal])
        return client

    yield _start
    for client in clients:
        client.close()


@pytest.fixture
def receiver(start_receiver: Callable[..., ReceiverClient], redis_url: str) -> ReceiverClient:
    return start_receiver(redis_url)
