"""Fixtures for the vendor tests: the fakes served over loopback, clients pointed at them, and a
recording sink that plays the bridge's callback receiver."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.sandbox.fakes import kiban as fake_kiban
from workers.sandbox.fakes import kompliant as fake_kompliant
from workers.sandbox.serving import ServerThread
from workers.sandbox.wait import holds_within
from workers.vendors.kiban.client import KibanClient
from workers.vendors.kompliant.client import KompliantClient

KIBAN_KEY = "kiban-test-key"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Sink:
    """A callback receiver that records every POST and answers ``status``."""

    url: str
    received: list[Received] = field(default_factory=list)
    status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path_part: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if path_part in r.path]

    def wait(self, path_part: str, count: int, timeout: float = 5.0) -> list[Received]:
        holds_within(lambda: len(self.on(path_part)) >= count, timeout)
        return self.on(path_part)


@pytest.fixture(scope="session")
def _sink_server() -> Iterator[Sink]:
    holder: dict[str, Sink] = {}

    async def receive(request: Request) -> Response:
        body = await request.json()
        record = Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body)
        with holder["sink"].lock:
            holder["sink"].received.append(record)
        return Response(status_code=holder["sink"].status)

    with ServerThread(Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])) as server:
        holder["sink"] = Sink(server.url)
        yield holder["sink"]


@pytest.fixture
def sink(_sink_server: Sink) -> Sink:
    """The session's recording receiver, emptied for this test."""
    with _sink_server.lock:
        _sink_server.received.clear()
    _sink_server.status = 200
    return _sink_server


@dataclass
class KibanRig:
    app: Starlette
    server: ServerThread
    sink: Sink
    make_client: Callable[..., KibanClient]

    @property
    def state(self) -> fake_kiban.FakeKibanState:
        state: fake_kiban.FakeKibanState = self.app.state.fake
        return state

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def _kiban_server(_sink_server: Sink) -> Iterator[tuple[Starlette, ServerThread]]:
    app = fake_kiban.create_app(
        KIBAN_KEY,
        end_callback_url=_sink_server.url + "/v1/kiban/executions/{execution_id}/finished",
        end_callback_api_key="end-key",
        decision_delay=0.02,
        nip_event_delay=0.01,
    )
    with ServerThread(app) as server:
        yield app, server


@pytest.fixture
def kiban(_kiban_server: tuple[Starlette, ServerThread], sink: Sink) -> Iterator[KibanRig]:
    """The session's fake Kiban (over loopback), reset for this test, and a client factory."""
    app, server = _kiban_server
    state: fake_kiban.FakeKibanState = app.state.fake
    holds_within(lambda: state.faults.in_flight == 0, 5.0)  # a timed-out request may still be sleeping
    state.wait_idle(2.0)
    state.reset()
    with sink.lock:
        sink.received.clear()
    clients: list[KibanClient] = []

    def make_client(**kwargs: Any) -> KibanClient:
        kwargs.setdefault("sandbox_host", "127.0.0.1")
        kwargs.setdefault("timeout", httpx.Timeout(5.0, connect=2.0))
        client = KibanClient(kwargs.pop("base_url", server.url), kwargs.pop("api_key", KIBAN_KEY), **kwargs)
        clients.append(client)
        return client

    yield KibanRig(app, server, sink, make_client)
    for client in clients:
        client.close()
    state.faults.reset()


@dataclass
class KompliantRig:
    app: Starlette
    server: ServerThread
    make_client: Callable[..., KompliantClient]

    @property
    def state(self) -> fake_kompliant.FakeKompliantState:
        state: fake_kompliant.FakeKompliantState = self.app.state.fake
        return state


@pytest.fixture(scope="session")
def _kompliant_server() -> Iterator[tuple[Starlette, ServerThread]]:
    app = fake_kompliant.create_app()
    with ServerThread(app) as server:
        yield app, server


@pytest.fixture
def kompliant(_kompliant_server: tuple[Starlette, ServerThread]) -> Iterator[KompliantRig]:
    """The session's fake Kompliant (over loopback), reset for this test, and a client factory."""
    app, server = _kompliant_server
    state: fake_kompliant.FakeKompliantState = app.state.fake
    holds_within(lambda: state.faults.in_flight == 0, 5.0)  # a timed-out request may still be sleeping
    state.reset()
    state.allow_duplicate_emails = False
    clients: list[KompliantClient] = []

    def make_client(**kwargs: Any) -> KompliantClient:
        options: dict[str, Any] = {
            "api_key": fake_kompliant.DEFAULT_API_KEY,
            "secret_key": fake_kompliant.DEFAULT_SECRET_KEY,
            "auth_token": fake_kompliant.DEFAULT_AUTH_TOKEN,
            "account_id": fake_kompliant.DEFAULT_ACCOUNT_ID,
            "timeout": httpx.Timeout(5.0, connect=2.0),
        }
        options.update(kwargs)
        client = KompliantClient(options.pop("base_url", server.url), **options)
        clients.append(client)
        return client

    yield KompliantRig(app, server, make_client)
    for client in clients:
        client.close()
    state.faults.reset()
