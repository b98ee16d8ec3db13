"""The bridge as it runs in production, on loopback: Redis, fake Kiban, fake Kompliant, receivers, workers
and the scheduler. One implementation for the demo, the tests and the benchmarks.

Every bridge process is configured only through environment variables (the ones production uses) and
runs under a ``Supervisor``: its own process group, its output in ``<log_dir>/<name>.log``. With
``in_process=True`` the fakes and the receivers run instead as uvicorn threads of this process, so a
test can read the fakes' state (``stack.kiban_state``); workers and the scheduler stay processes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import redis
from starlette.applications import Starlette

from workers.core.crypto import generate_entry
from workers.core.settings import Settings, load_settings, redact_url
from workers.sandbox.fakes import kompliant as fake_kompliant
from workers.sandbox.redis_server import RedisServer, free_port
from workers.sandbox.serving import ServerThread, receiver_thread
from workers.sandbox.supervisor import Child, Supervisor, child_popen_kwargs
from workers.sandbox.wait import WaitTimeout, wait_http, wait_until

DEFINITION_ID = "demo-credit-origination"
CLI = [sys.executable, "-m", "workers.ops.cli"]
# Variables of the caller's environment a stack never passes on: a stack's processes see only its own.
_OWN_PREFIXES = ("BRIDGE_", "KIBAN_", "KOMPLIANT_", "REDIS_URL", "EVENTS_", "LOG_")
# The demo's pace and logs: production waits 30 s before resending a NIP and backs off from 1 s.
DEMO_TUNING: Mapping[str, str] = {
    "BRIDGE_KIBAN_SANDBOX": "true",
    "BRIDGE_KIBAN_SCENARIO_ID": "approved",
    "BRIDGE_LOG_FORMAT": "json",
    "BRIDGE_LOG_LEVEL": "INFO",
    "BRIDGE_NIP_RESEND_DELAY_SECONDS": "0.3",
    "BRIDGE_RETRY_BASE_SECONDS": "0.2",
    "BRIDGE_RETRY_CAP_SECONDS": "2",
}


@dataclass(frozen=True)
class StackKeys:
    """Credentials of one stack (the demo generates them; tests and benchmarks fix them)."""

    callback: str
    internal: str
    kiban: str
    kompliant_api: str = fake_kompliant.DEFAULT_API_KEY
    kompliant_secret: str = fake_kompliant.DEFAULT_SECRET_KEY
    kompliant_token: str = fake_kompliant.DEFAULT_AUTH_TOKEN
    kompliant_account: str = fake_kompliant.DEFAULT_ACCOUNT_ID
    data: str = field(default_factory=generate_entry)  # BRIDGE_DATA_KEYS: random for every stack

    @classmethod
    def generate(cls) -> StackKeys:
        return cls(
            # 48 hex digits: long, random and never a placeholder word (the receiver refuses those).
            callback="cb_" + secrets.token_hex(24),
            internal="in_" + secrets.token_hex(24),
            kiban="kb_" + secrets.token_urlsafe(24),
            kompliant_api="sb_" + secrets.token_urlsafe(16),
            kompliant_secret=base64.b64encode(secrets.token_bytes(33)).decode(),
            kompliant_token="tok_" + secrets.token_urlsafe(16),
            kompliant_account="sb_demoaccount",
        )


@dataclass
class StackConfig:
    receivers: int = 1
    workers: int = 2  # started (and waited for) by ``start()``; more with ``add_worker()``
    scheduler: bool = True  # a ``scheduler`` process (RQ's cron: the reconciler sweep)
    in_process: bool = False  # fakes and receivers as threads of this process
    guarded: bool = True  # in-process receivers: the header guards of ``serve`` (receiver.protocol)
    redis_url: str | None = None  # an existing Redis; None: a private redis-server
    appendonly: bool = False
    keys: StackKeys | None = None  # None: generated
    definition_id: str = DEFINITION_ID
    tuning: Mapping[str, str] = field(default_factory=lambda: dict(DEMO_TUNING))
    extra_env: Mapping[str, str] = field(default_factory=dict)  # on top of everything else
    # On top of that, per role ("receiver", "worker", "scheduler"): e.g. each role's own Redis ACL user
    # in REDIS_URL (the stack's own clients use ``redis_url``).
    role_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    decision_delay: float | None = None  # fake Kiban pace; None: the fake's own default
    nip_event_delay: float | None = None
    kiban_faults: Mapping[str, Any] = field(default_factory=dict)  # initial fault knobs
    kompliant_faults: Mapping[str, Any] = field(default_factory=dict)
    end_callback_receiver: int = 0  # the receiver the fake's end-of-workfloo callback goes to
    callback_base: str | None = None  # where Kiban is told to call back (default: receiver 0)
    log_dir: Path | None = None  # None: a temporary directory (``cleanup_logs`` removes it)
    host: str = "127.0.0.1"
    start_timeout: float = 30.0
    worker_metrics: bool = True  # each worker process serves its metrics on a free port of its own
    cwd: Path | None = None


class Stack:
    """``with Stack(config) as stack:`` starts everything and waits until each piece is ready."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.keys = self.config.keys or StackKeys.generate()
        self._own_log_dir = self.config.log_dir is None
        if self.config.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="workfloo-stack-"))
        else:
            self.log_dir = self.config.log_dir
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(log_dir=self.log_dir, grace_seconds=10.0)
        self.redis_server: RedisServer | None = None
        self.redis_url = self.config.redis_url or ""
        self.client: redis.Redis | None = None
        self.children: dict[str, Child] = {}
        self.threads: dict[str, ServerThread] = {}
        self.apps: dict[str, Starlette] = {}  # in-process fakes
        self._workers = 0
        self.worker_metrics_urls: dict[str, str] = {}  # worker child name -> its /metrics URL
        host = self.config.host
        self.kiban_port, self.kompliant_port = free_port(), free_port()
        self.receiver_ports = [free_port() for _ in range(self.config.receivers)]
        self.receiver_internal_ports = [free_port() for _ in range(self.config.receivers)]
        self.kiban_url = f"http://{host}:{self.kiban_port}"
        self.kompliant_url = f"http://{host}:{self.kompliant_port}"
        self.receiver_urls = [f"http://{host}:{port}" for port in self.receiver_ports]
        self.receiver_internal_urls = [f"http://{host}:{port}" for port in self.receiver_internal_ports]

    @property
    def receiver_url(self) -> str:
        """Receiver 0's public listener (Kiban's callbacks, /healthz)."""
        return self.receiver_urls[0]

    @property
    def internal_url(self) -> str:
        """Receiver 0's internal listener (commands, timeline, /readyz, /metrics, /openapi.json)."""
        return self.receiver_internal_urls[0]

    @property
    def callback_base(self) -> str:
        return self.config.callback_base or self.receiver_url

    def receiver_name(self, index: int) -> str:
        return "receiver" if self.config.receivers == 1 else f"receiver-{'ABCDEFGH'[index]}"

    # -- configuration -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment every bridge process of this stack runs with (also usable by CLI calls)."""
        k = self.keys
        env = {key: value for key, value in os.environ.items() if not key.startswith(_OWN_PREFIXES)}
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "BRIDGE_CALLBACK_KEYS": k.callback,
                "BRIDGE_INTERNAL_KEYS": k.internal,
                "BRIDGE_DATA_KEYS": k.data,
                "BRIDGE_PUBLIC_URL": self.callback_base,
                "BRIDGE_KIBAN_BASE_URL": self.kiban_url,
                "BRIDGE_KIBAN_API_KEY": k.kiban,
                "BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID": self.config.definition_id,
                "BRIDGE_KOMPLIANT_BASE_URL": self.kompliant_url,
                "BRIDGE_KOMPLIANT_API_KEY": k.kompliant_api,
                "BRIDGE_KOMPLIANT_SECRET_KEY": k.kompliant_secret,
                "BRIDGE_KOMPLIANT_AUTH_TOKEN": k.kompliant_token,
                "BRIDGE_KOMPLIANT_ACCOUNT_ID": k.kompliant_account,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.config.tuning)
        env.update(self.config.extra_env)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """Settings of this stack for code running in this process (commands API, publisher)."""
        values: dict[str, Any] = {
            "redis_url": self.redis_url,
            "bridge_callback_keys": self.keys.callback,
            "bridge_internal_keys": self.keys.internal,
            "bridge_data_keys": self.keys.data,
            "kiban_api_key": self.keys.kiban,
            "kiban_workfloo_definition_id": self.config.definition_id,
            "log_level": "WARNING",
        }
        values.update(overrides)
        return load_settings(**values)

    def queues(self) -> list[str]:
        """Every queue the bridge enqueues to, as this stack's processes name them: the jobs' queue and the
        HTTP subscribers' delivery queue (the workers ``start()`` runs take both, like one worker of
        each kind in production)."""
        env = self.env()
        fields = Settings.model_fields
        return [
            env.get("BRIDGE_QUEUE", str(fields["bridge_queue"].default)),
            env.get("BRIDGE_HTTP_SUBSCRIBERS_QUEUE", str(fields["bridge_http_subscribers_queue"].default)),
        ]

    def redis(self) -> redis.Redis:
        """A new client of the stack's Redis (one per thread; ``client`` is the stack's own)."""
        from workers.core.redis_client import redis_from_url

        return redis_from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5)

    @property
    def end_callback_url(self) -> str:
        base = self.config.callback_base or self.receiver_urls[self.config.end_callback_receiver]
        return base + "/v1/kiban/executions/{execution_id}/finished"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, on_step: Callable[[str], None] | None = None) -> Stack:
        """Start every piece in dependency order; on any failure stop what was started and re-raise."""
        step = on_step or (lambda _message: None)
        try:
            self._start(step)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, step: Callable[[str], None]) -> None:
        timeout = self.config.start_timeout
        if not self.redis_url:
            step("starting embedded redis-server")
            self.redis_server = RedisServer(
                appendonly=self.config.appendonly, popen_kwargs=child_popen_kwargs()
            )
            self.redis_server.start(timeout=timeout)
            self.redis_url = self.redis_server.url
            self.client = redis.Redis.from_url(self.redis_url)
        else:
            step(f"using Redis at {redact_url(self.redis_url)}")
            self.client = self.redis()
            self.client.ping()
        if self.config.in_process:
            step("starting fake Kiban, fake Kompliant and the receiver")
            self._start_threads()
        else:
            step("starting fake Kiban and fake Kompliant")
            self._start_fakes()
            step("starting the receiver and the workers")
            for index in range(self.config.receivers):
                self.spawn(
                    self.receiver_name(index),
                    "serve",
                    "--host",
                    self.config.host,
                    "--port",
                    str(self.receiver_ports[index]),
                    "--internal-host",
                    self.config.host,
                    "--internal-port",
                    str(self.receiver_internal_ports[index]),
                    env=self.config.role_env.get("receiver"),
                )
        for _ in range(self.config.workers):
            self.add_worker(queues=self.queues())
        if self.config.scheduler:
            self.spawn("scheduler", "scheduler", env=self.config.role_env.get("scheduler"))
        if not self.config.in_process:
            for name, url in (("fake-kiban", self.kiban_url), ("fake-kompliant", self.kompliant_url)):
                wait_http(f"{url}/_fake/faults", timeout=timeout, child=self.children[name])
        for index, url in enumerate(self.receiver_internal_urls):
            wait_http(f"{url}/readyz", timeout=timeout, child=self.children.get(self.receiver_name(index)))
        if self.config.workers:
            step("waiting for the workers to register")
            self.wait_workers(self.config.workers, timeout=timeout)
        step("stack ready")

    def _start_fakes(self) -> None:
        k = self.keys
        kiban = ["--host", self.config.host, "--port", str(self.kiban_port), "--api-key", k.kiban]
        kiban += ["--end-callback-url", self.end_callback_url, "--end-callback-api-key", k.callback]
        if self.config.decision_delay is not None:
            kiban += ["--decision-delay", str(self.config.decision_delay)]
        if self.config.nip_event_delay is not None:
            kiban += ["--nip-event-delay", str(self.config.nip_event_delay)]
        if self.config.kiban_faults:
            kiban += ["--faults", json.dumps(dict(self.config.kiban_faults))]
        kompliant = ["--host", self.config.host, "--port", str(self.kompliant_port)]
        kompliant += ["--api-key", k.kompliant_api, "--secret-key", k.kompliant_secret]
        kompliant += ["--auth-token", k.kompliant_token, "--account-id", k.kompliant_account]
        if self.config.kompliant_faults:
            kompliant += ["--faults", json.dumps(dict(self.config.kompliant_faults))]
        python = sys.executable
        env = self.env()
        for name, module, args in (
            ("fake-kiban", "workers.sandbox.fakes.kiban", kiban),
            ("fake-kompliant", "workers.sandbox.fakes.kompliant", kompliant),
        ):
            self.children[name] = self.supervisor.start(
                name, [python, "-m", module, *args], env=env, cwd=self.config.cwd
            )

    def _start_threads(self) -> None:
        from workers.sandbox.fakes import kiban as fake_kiban
        from workers.sandbox.fakes.faults import Faults

        k, host = self.keys, self.config.host
        kompliant = fake_kompliant.create_app(
            k.kompliant_api,
            k.kompliant_secret,
            k.kompliant_token,
            k.kompliant_account,
            faults=Faults(**self.config.kompliant_faults),
        )
        # Bound here on port 0 (no race for a free port); the URLs follow the sockets.
        self.apps["fake-kompliant"] = kompliant
        self.threads["fake-kompliant"] = ServerThread(kompliant, host=host).start()
        self.kompliant_port = self.threads["fake-kompliant"].port
        self.kompliant_url = self.threads["fake-kompliant"].url
        role_url = self.config.role_env.get("receiver", {}).get("REDIS_URL")
        settings = self.settings(**({"redis_url": role_url} if role_url else {}))
        for index in range(self.config.receivers):
            server = receiver_thread(settings, host, guarded=self.config.guarded)
            self.threads[self.receiver_name(index)] = server
            self.receiver_ports[index], self.receiver_urls[index] = server.port, server.url
            self.receiver_internal_ports[index] = server.ports[1]
            self.receiver_internal_urls[index] = server.internal_url
        pace: dict[str, Any] = {
            name: value
            for name, value in (
                ("decision_delay", self.config.decision_delay),
                ("nip_event_delay", self.config.nip_event_delay),
            )
            if value is not None
        }
        kiban = fake_kiban.create_app(
            k.kiban,
            end_callback_url=self.end_callback_url,
            end_callback_api_key=k.callback,
            faults=Faults(**self.config.kiban_faults),
            **pace,
        )
        self.apps["fake-kiban"] = kiban
        self.threads["fake-kiban"] = ServerThread(kiban, host=host).start()
        self.kiban_port, self.kiban_url = self.threads["fake-kiban"].port, self.threads["fake-kiban"].url
        for index in range(self.config.receivers):
            self.threads[self.receiver_name(index)].start()

    def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Child:
        """``python -m workers.ops.cli ARGS`` as the child ``name`` with the stack's environment."""
        child = self.supervisor.start(
            name, [*CLI, *args], env={**self.env(), **(env or {})}, cwd=self.config.cwd
        )
        self.children[name] = child
        return child

    def add_worker(
        self,
        name: str | None = None,
        *,
        scheduler: bool | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = False,
        queues: Sequence[str] = (),
    ) -> Child:
        """One more ``worker`` process; ``name`` is also its RQ name (default: RQ's own, log ``worker-N``).
        ``scheduler``: ``--scheduler``/``--no-scheduler`` (None: the CLI's default); ``queues``: its
        ``--queue`` options (none: the CLI's default, ``BRIDGE_QUEUE``)."""
        self._workers += 1
        args = ["worker"]
        for queue in queues:
            args += ["--queue", queue]
        if scheduler is not None:
            args.append("--scheduler" if scheduler else "--no-scheduler")
        if name is not None:
            args += ["--name", name]
        child_name = name or f"worker-{self._workers}"
        metrics_env: dict[str, str] = {}
        if self.config.worker_metrics and "BRIDGE_WORKER_METRICS_PORT" not in (env or {}):
            port = free_port()
            metrics_env = {
                "BRIDGE_WORKER_METRICS_PORT": str(port),
                "BRIDGE_WORKER_METRICS_ADDRESS": self.config.host,
            }
            self.worker_metrics_urls[child_name] = f"http://{self.config.host}:{port}/metrics"
        child = self.spawn(
            child_name,
            *args,
            env={**metrics_env, **self.config.role_env.get("worker", {}), **(env or {})},
        )
        if wait:
            from rq import Worker

            client = self.redis()
            try:
                wait_until(
                    lambda: (
                        any(w.name == name for w in Worker.all(connection=client))
                        if name
                        else bool(Worker.all(connection=client))
                    ),
                    timeout=self.config.start_timeout,
                    what=f"worker {child.name} to register",
                    child=child,
                )
            finally:
                client.close()
        return child

    def wait_workers(self, count: int, timeout: float) -> None:
        from rq import Worker

        client = self.redis()
        workers = [c for name, c in self.children.items() if name.startswith("worker-")]

        def registered() -> bool:
            for child in workers:
                if not child.alive():
                    code = child.process.returncode
                    raise WaitTimeout(f"{child.name} exited with code {code}:\n{child.log_tail()}")
            return len(Worker.all(connection=client)) >= count

        try:
            wait_until(
                registered, timeout=timeout, interval=0.1, what=f"{count} workers", ignore=(redis.RedisError,)
            )
        finally:
            client.close()

    def kill(self, child: Child, sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole process group (a forked work horse too) and reap it."""
        if child.alive():
            os.killpg(child.pid, sig)
            child.process.wait(timeout=15)

    # -- the fakes ---------------------------------------------------------------------------

    def fake_url(self, which: str) -> str:
        return {"kiban": self.kiban_url, "kompliant": self.kompliant_url}[which]

    def set_faults(self, which: str, **knobs: Any) -> None:
        """Change a fake's fault knobs from here, whichever way it runs (``POST /_fake/faults``)."""
        httpx.post(f"{self.fake_url(which)}/_fake/faults", json=knobs, timeout=10).raise_for_status()

    def reset_faults(self) -> None:
        for which in ("kiban", "kompliant"):
            httpx.post(f"{self.fake_url(which)}/_fake/faults/reset", timeout=10).raise_for_status()

    def fake_state(self, which: str) -> Any:
        """The in-process fake's ``app.state.fake`` (``in_process=True`` only)."""
        return self.apps[f"fake-{which}"].state.fake

    # -- inspection --------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        found = {name: child.pid for name, child in self.children.items()}
        if self.redis_server is not None and self.redis_server.process is not None:
            found["redis-server"] = self.redis_server.process.pid
        return found

    def dead_children(self) -> list[Child]:
        return self.supervisor.failed()

    def log_lines(self) -> list[tuple[str, str]]:
        """(role, line) for every line every child wrote, plus redis-server's own log; the role is the
        child's name without its ``-N`` index (``worker-2`` -> ``worker``)."""
        lines: list[tuple[str, str]] = []
        for child in self.supervisor.children:
            if child.log_path is not None and child.log_path.exists():
                role = re.sub(r"-\d+$", "", child.name)
                text = child.log_path.read_text(errors="replace")
                lines.extend((role, line) for line in text.splitlines())
        if self.redis_server is not None:
            redis_log = self.redis_server.dir / "redis.log"
            if redis_log.exists():
                lines.extend(("redis", line) for line in redis_log.read_text(errors="replace").splitlines())
        return lines

    # -- shutdown ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every child process and thread, then the embedded Redis (workers need it to shut down)."""
        self.supervisor.stop_all()
        self.children.clear()
        for server in reversed(list(self.threads.values())):
            server.stop()
        self.threads.clear()
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.redis_server is not None:
            self.redis_server.close()
            self.redis_server = None

    def cleanup_logs(self) -> None:
        """Remove the log directory if this stack created it (kept when something went wrong)."""
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["CLI", "DEFINITION_ID", "DEMO_TUNING", "Stack", "StackConfig", "StackKeys"]
