"""Run an ASGI app under uvicorn in a background thread on a free loopback port (or several: the
receiver's public and internal listeners, ``receiver_thread``).

Used by the tests (to cross real HTTP), the demo (for the fake vendors) and the benchmarks.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

import uvicorn

from workers.sandbox.wait import WaitTimeout, wait_until

if TYPE_CHECKING:
    from workers.core.settings import Settings


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port), not yet listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class ServerThread:
    """``sockets``: serve on these (already bound) instead of one bound here; ``url`` is the first's."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sockets: list[socket.socket] | None = None,
        **config: Any,
    ) -> None:
        self._sockets = sockets or [bind(host, port)]
        self._sock = self._sockets[0]
        self.host = host
        self.ports: list[int] = [sock.getsockname()[1] for sock in self._sockets]
        self.port: int = self.ports[0]
        config.setdefault("log_config", None)
        config.setdefault("access_log", False)
        config.setdefault("lifespan", "auto")
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def internal_url(self) -> str:
        """URL of the second socket (the receiver's internal listener, ``receiver_thread``)."""
        return f"http://{self.host}:{self.ports[1]}"

    def _run(self) -> None:
        self.server.run(sockets=self._sockets)

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()

        def started() -> bool:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            return bool(self.server.started)

        try:
            wait_until(started, timeout=timeout, interval=0.01, what="uvicorn to start")
        except WaitTimeout:
            raise RuntimeError("uvicorn did not start") from None
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def receiver_thread(
    settings: Settings,
    host: str = "127.0.0.1",
    *,
    guarded: bool = True,
    internal_routes: Any = None,
    **config: Any,
) -> ServerThread:
    """The receiver app on two free ports as ``workfloo-bridge serve`` runs it: ``url`` is the public
    listener, ``internal_url`` the internal one (their ports replace the settings' own); ``guarded``:
    the slow-client guards of ``receiver.protocol``; ``internal_routes``: as ``create_app`` takes them
    (``workers.ops.console.console_routes`` mounts the operator console). Not started."""
    from receiver.app import create_app
    from receiver.protocol import guarded_protocol

    public, internal = bind(host), bind(host)
    ports = {
        "bridge_public_host": host,
        "bridge_public_port": public.getsockname()[1],
        "bridge_internal_host": host,
        "bridge_internal_port": internal.getsockname()[1],
    }
    settings = settings.model_copy(update=ports)
    if guarded:
        config.setdefault("http", guarded_protocol(settings))
    app = create_app(settings, internal_routes=internal_routes)
    return ServerThread(app, host, sockets=[public, internal], **config)
