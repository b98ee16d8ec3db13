"""Run an ASGI app under uvicorn in a background thread on a free loopback port.

Used by the tests (to cross real HTTP), the demo (for the fake vendors) and the benchmarks.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

from workers.sandbox.wait import WaitTimeout, wait_until


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config.setdefault("log_config", None)
        config.setdefault("access_log", False)
        config.setdefault("lifespan", "auto")
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self.server.run(sockets=[self._sock])

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
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
