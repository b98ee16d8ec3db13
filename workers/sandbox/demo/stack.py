"""The embedded stack: Redis, fake Kiban, fake Kompliant, the receiver and worker processes.

Everything is a real process talking real HTTP and real Redis on loopback, configured only through
environment variables (the same ones production uses) with keys generated for this run. Process logs
go to files under ``log_dir``; nothing is printed by the children.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from workers.sandbox.redis_server import RedisServer, free_port
from workers.sandbox.supervisor import Child, Supervisor, child_popen_kwargs
from workers.sandbox.wait import WaitTimeout, wait_http, wait_port, wait_until

DEFINITION_ID = "demo-credit-origination"


@dataclass(frozen=True)
class DemoKeys:
    """Credentials generated for one run (never printed unless ``--keep-running`` asks for them)."""

    callback: str
    internal: str
    kiban: str
    kompliant_api: str
    kompliant_secret: str
    kompliant_token: str
    kompliant_account: str

    @classmethod
    def generate(cls) -> DemoKeys:
        return cls(
            callback="cb_" + secrets.token_urlsafe(24),
            internal="in_" + secrets.token_urlsafe(24),
            kiban="kb_" + secrets.token_urlsafe(24),
            kompliant_api="sb_" + secrets.token_urlsafe(16),
            kompliant_secret=base64.b64encode(secrets.token_bytes(33)).decode(),
            kompliant_token="tok_" + secrets.token_urlsafe(16),
            kompliant_account="sb_demoaccount",
        )


@dataclass
class StackConfig:
    workers: int = 2
    redis_url: str | None = None
    log_dir: Path | None = None
    host: str = "127.0.0.1"
    start_timeout: float = 30.0
    extra_env: Mapping[str, str] = field(default_factory=dict)


class DemoStack:
    """``with DemoStack(config) as stack:`` starts everything and waits until each piece is ready."""

    def __init__(self, config: StackConfig | None = None, keys: DemoKeys | None = None) -> None:
        self.config = config or StackConfig()
        self.keys = keys or DemoKeys.generate()
        self._own_log_dir = self.config.log_dir is None
        if self.config.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="workfloo-demo-"))
        else:
            self.log_dir = self.config.log_dir
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(log_dir=self.log_dir, grace_seconds=10.0)
        self.redis_server: RedisServer | None = None
        self.redis_url = self.config.redis_url or ""
        host = self.config.host
        self.kiban_port = free_port()
        self.kompliant_port = free_port()
        self.receiver_port = free_port()
        self.kiban_url = f"http://{host}:{self.kiban_port}"
        self.kompliant_url = f"http://{host}:{self.kompliant_port}"
        self.receiver_url = f"http://{host}:{self.receiver_port}"
        self.children: dict[str, Child] = {}

    # -- configuration -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment every bridge process of this stack runs with (also usable by CLI calls)."""
        k = self.keys
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BRIDGE_", "KIBAN_", "KOMPLIANT_", "REDIS_URL", "EVENTS_", "LOG_"))
        }
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "BRIDGE_CALLBACK_KEYS": k.callback,
                "BRIDGE_INTERNAL_KEYS": k.internal,
                "BRIDGE_PUBLIC_URL": self.receiver_url,
                "KIBAN_BASE_URL": self.kiban_url,
                "KIBAN_API_KEY": k.kiban,
                "KIBAN_SANDBOX": "true",
                "KIBAN_WORKFLOO_DEFINITION_ID": DEFINITION_ID,
                "KIBAN_SCENARIO_ID": "approved",
                "KOMPLIANT_BASE_URL": self.kompliant_url,
                "KOMPLIANT_API_KEY": k.kompliant_api,
                "KOMPLIANT_SECRET_KEY": k.kompliant_secret,
                "KOMPLIANT_AUTH_TOKEN": k.kompliant_token,
                "KOMPLIANT_ACCOUNT_ID": k.kompliant_account,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                # Demo pace: production waits 30 s before resending a NIP and backs off from 1 s.
                "NIP_RESEND_DELAY_SECONDS": "0.3",
                "RETRY_BASE_SECONDS": "0.2",
                "RETRY_CAP_SECONDS": "2",
            }
        )
        env.update(self.config.extra_env)
        return env

    def redis(self) -> redis.Redis:
        from workers.core.redis_client import redis_from_url

        return redis_from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, on_step: Callable[[str], None] | None = None) -> None:
        """Start every piece in dependency order; on any failure stop what was started and re-raise."""
        step = on_step or (lambda _message: None)
        try:
            self._start(step)
        except BaseException:
            self.stop()
            raise

    def _start(self, step: Callable[[str], None]) -> None:
        timeout = self.config.start_timeout
        if not self.redis_url:
            step("starting embedded redis-server")
            self.redis_server = RedisServer(popen_kwargs=child_popen_kwargs())
            self.redis_server.start(timeout=timeout)
            self.redis_url = self.redis_server.url
        else:
            step(f"using Redis at {self.redis_url}")
            client = self.redis()
            try:
                client.ping()
            finally:
                client.close()
        env = self.env()
        python = sys.executable
        step("starting fake Kiban and fake Kompliant")
        self.children["fake-kiban"] = self.supervisor.start(
            "fake-kiban", [python, "-m", "workers.sandbox.fakes.kiban", *self._kiban_args()], env=env
        )
        self.children["fake-kompliant"] = self.supervisor.start(
            "fake-kompliant",
            [python, "-m", "workers.sandbox.fakes.kompliant", *self._kompliant_args()],
            env=env,
        )
        step("starting the receiver and the workers")
        self.children["receiver"] = self.supervisor.start(
            "receiver",
            [
                python,
                "-m",
                "workers.ops.cli",
                "serve",
                "--host",
                self.config.host,
                "--port",
                str(self.receiver_port),
            ],
            env=env,
        )
        for i in range(self.config.workers):
            name = f"worker-{i + 1}"
            self.children[name] = self.supervisor.start(
                name, [python, "-m", "workers.ops.cli", "worker"], env=env
            )
        self.children["scheduler"] = self.supervisor.start(
            "scheduler", [python, "-m", "workers.ops.cli", "scheduler"], env=env
        )
        wait_port(self.kiban_port, timeout=timeout, child=self.children["fake-kiban"])
        wait_port(self.kompliant_port, timeout=timeout, child=self.children["fake-kompliant"])
        wait_http(f"{self.receiver_url}/readyz", timeout=timeout, child=self.children["receiver"])
        step("waiting for the workers to register")
        self.wait_workers(self.config.workers, timeout=timeout)
        step("stack ready")

    def _kiban_args(self) -> list[str]:
        return [
            "--host",
            self.config.host,
            "--port",
            str(self.kiban_port),
            "--api-key",
            self.keys.kiban,
            "--end-callback-url",
            self.receiver_url + "/v1/kiban/executions/{execution_id}/finished",
            "--end-callback-api-key",
            self.keys.callback,
        ]

    def _kompliant_args(self) -> list[str]:
        return [
            "--host",
            self.config.host,
            "--port",
            str(self.kompliant_port),
            "--api-key",
            self.keys.kompliant_api,
            "--secret-key",
            self.keys.kompliant_secret,
            "--auth-token",
            self.keys.kompliant_token,
            "--account-id",
            self.keys.kompliant_account,
        ]

    def wait_workers(self, count: int, timeout: float) -> None:
        from rq import Worker

        client = self.redis()
        workers = [c for name, c in self.children.items() if name.startswith("worker-")]

        def _registered() -> bool:
            for child in workers:
                if not child.alive():
                    code = child.process.returncode
                    raise WaitTimeout(f"{child.name} exited with code {code}:\n{child.log_tail()}")
            return len(Worker.all(connection=client)) >= count

        try:
            wait_until(
                _registered,
                timeout=timeout,
                interval=0.1,
                what=f"{count} workers",
                ignore=(redis.RedisError, OSError),
            )
        finally:
            client.close()

    def pids(self) -> dict[str, int]:
        found = {name: child.pid for name, child in self.children.items()}
        if self.redis_server is not None and self.redis_server.process is not None:
            found["redis-server"] = self.redis_server.process.pid
        return found

    def dead_children(self) -> list[Child]:
        return self.supervisor.failed()

    def stop(self) -> None:
        """Stop every child process, then the embedded Redis (workers need it to shut down cleanly)."""
        self.supervisor.stop_all()
        self.children.clear()
        if self.redis_server is not None:
            self.redis_server.close()
            self.redis_server = None

    def cleanup_logs(self) -> None:
        """Remove the log directory if this stack created it (kept when something went wrong)."""
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> DemoStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["DEFINITION_ID", "DemoKeys", "DemoStack", "StackConfig", "wait_until"]
