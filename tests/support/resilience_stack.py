"""The bridge as separate processes, as it runs in production: a private redis-server (AOF), the fake
vendors (``python -m workers.sandbox.fakes.*``), the receiver (``workfloo-bridge serve``) and, when asked, the
workers (``workfloo-bridge worker``). Every process writes its stderr (and stdout) to its own log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from workers.sandbox.fakes import kompliant as fake_kompliant
from workers.sandbox.redis_server import RedisServer, free_port
from workers.sandbox.wait import WaitTimeout, wait_until

BIN = Path(sys.executable).parent / "workfloo-bridge"
CALLBACK_KEY = "cb-key-resilience-5e1d0c2b9a"
INTERNAL_KEY = "internal-key-resilience-77c1d3e0"
KIBAN_KEY = "kiban-key-resilience-0f4a8e6d"
DEFINITION = "def-resilience"


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code < 500
    except httpx.HTTPError:
        return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class ProcessStack:
    redis_server: RedisServer
    redis: redis.Redis
    env: dict[str, str]
    logdir: Path
    receiver_url: str = ""
    kiban_url: str = ""
    kompliant_url: str = ""
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.logdir / f"{len(self.procs):02d}-{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args, env={**self.env, **(extra_env or {})}, start_new_session=True, stdout=out, stderr=out
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, extra_env: dict[str, str] | None = None) -> Proc:
        return self.spawn("worker", [str(BIN), "worker"], extra_env)

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(timeout=15)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)

    def log_lines(self) -> list[tuple[str, str]]:
        """(process name, line) for every line every process wrote, plus redis-server's own log."""
        lines: list[tuple[str, str]] = []
        for proc in self.procs:
            text = proc.log.read_text(errors="replace")
            lines.extend((proc.name, line) for line in text.splitlines())
        redis_log = self.redis_server.dir / "redis.log"
        if redis_log.exists():
            lines.extend(("redis", line) for line in redis_log.read_text(errors="replace").splitlines())
        return lines


@contextmanager
def process_stack(
    logdir: Path, extra_env: dict[str, str] | None = None, *, kiban_args: list[str] | None = None
) -> Iterator[ProcessStack]:
    server = RedisServer(appendonly=True)
    server.start()
    client = redis.Redis.from_url(server.url)
    ports = {"receiver": free_port(), "kiban": free_port(), "kompliant": free_port()}
    receiver_url = f"http://127.0.0.1:{ports['receiver']}"
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "BRIDGE_PUBLIC_URL": receiver_url,
        "BRIDGE_CALLBACK_KEYS": CALLBACK_KEY,
        "BRIDGE_INTERNAL_KEYS": INTERNAL_KEY,
        "KIBAN_BASE_URL": f"http://127.0.0.1:{ports['kiban']}",
        "KIBAN_API_KEY": KIBAN_KEY,
        "KIBAN_WORKFLOO_DEFINITION_ID": DEFINITION,
        "KOMPLIANT_BASE_URL": f"http://127.0.0.1:{ports['kompliant']}",
        "KOMPLIANT_API_KEY": fake_kompliant.DEFAULT_API_KEY,
        "KOMPLIANT_SECRET_KEY": fake_kompliant.DEFAULT_SECRET_KEY,
        "KOMPLIANT_AUTH_TOKEN": fake_kompliant.DEFAULT_AUTH_TOKEN,
        "KOMPLIANT_ACCOUNT_ID": fake_kompliant.DEFAULT_ACCOUNT_ID,
        "LOG_LEVEL": "DEBUG",
        **(extra_env or {}),
    }
    stack = ProcessStack(server, client, env, logdir, receiver_url=receiver_url)
    stack.kiban_url = env["KIBAN_BASE_URL"]
    stack.kompliant_url = env["KOMPLIANT_BASE_URL"]
    try:
        stack.spawn(
            "kompliant",
            [sys.executable, "-m", "workers.sandbox.fakes.kompliant", "--port", str(ports["kompliant"])],
        )
        stack.spawn(
            "kiban",
            [
                sys.executable, "-m", "workers.sandbox.fakes.kiban", "--port", str(ports["kiban"]),
                "--api-key", KIBAN_KEY,
                "--end-callback-url", f"{receiver_url}/v1/kiban/executions/{{execution_id}}/finished",
                "--end-callback-api-key", CALLBACK_KEY,
                "--decision-delay", "0.1", "--nip-event-delay", "0.05",
                *(kiban_args or []),
            ],
        )  # fmt: skip
        stack.spawn("receiver", [str(BIN), "serve", "--port", str(ports["receiver"])])
        wait_until(lambda: _up(f"{receiver_url}/healthz"), timeout=20, what="the receiver")
        wait_until(lambda: _up(f"{stack.kiban_url}/_fake/executions"), timeout=20, what="the fake Kiban")
        wait_until(
            lambda: _up(f"{stack.kompliant_url}/_fake/workflows"), timeout=20, what="the fake Kompliant"
        )
        yield stack
    finally:
        stack.stop_all()
        client.close()
        server.close()


# -- the bridge with in-thread receiver and fakes, worker processes ---------------------------------

TERMINAL_TYPES = ("workfloo.completed", "workfloo.failed", "workfloo.abandoned")
# Effect events the publisher makes unique per execution: a second one would be a duplicated effect.
ONCE_PER_EXECUTION = (
    "application.started",
    "nip.validated",
    *TERMINAL_TYPES,
    "kompliant.workflow.created",
    "kompliant.workflow.started",
    "kompliant.workflow.rejected",
)
# Fast timings so crashes are noticed and retries run within seconds (production defaults are longer).
FAST_ENV = {
    "RETRY_BASE_SECONDS": "0.05",
    "RETRY_CAP_SECONDS": "0.5",
    "RETRY_MAX_ATTEMPTS": "10",
    "NIP_RESEND_DELAY_SECONDS": "0.2",
    "WORKER_HEARTBEAT_SECONDS": "1",
    "WORKER_HEARTBEAT_GRACE_SECONDS": "2",
    "REAPER_INTERVAL_SECONDS": "0.5",
    "WORKER_TTL_SECONDS": "16",
    "HANDOFF_LOCK_TTL_SECONDS": "3",
    "LOG_LEVEL": "INFO",
}


@dataclass
class Bridge:
    redis_server: RedisServer
    redis: redis.Redis
    settings: Any
    receiver: Any
    kiban: Any
    kompliant: Any
    env: dict[str, str]
    logdir: Path
    procs: list[Proc] = field(default_factory=list)
    scenario_of: dict[str, str] = field(default_factory=dict)

    # processes
    def start_worker(self, name: str, *, scheduler: bool = True) -> Proc:
        log = self.logdir / f"{len(self.procs):02d}-{name}.log"
        args = [str(BIN), "worker", "--scheduler" if scheduler else "--no-scheduler", "--name", name]
        with log.open("wb") as out:
            popen = subprocess.Popen(args, env=self.env, start_new_session=True, stdout=out, stderr=out)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=15)

    def stop_all(self) -> None:
        ProcessStack.stop_all(self)  # type: ignore[arg-type]

    def current_job(self, worker_name: str) -> str | None:
        """Id of a job the worker is running now (RQ 3 keeps a worker's executions in a set)."""
        for member in self.redis.smembers(f"rq:worker:{worker_name}:executions"):
            return str(member.decode().rsplit(":", 1)[0])
        return None

    # vendors
    def faults(self, which: str, **knobs: Any) -> None:
        url = self.kiban.url if which == "kiban" else self.kompliant.url
        httpx.post(f"{url}/_fake/faults", json=knobs, timeout=10).raise_for_status()

    def reset_faults(self) -> None:
        for url in (self.kiban.url, self.kompliant.url):
            httpx.post(f"{url}/_fake/faults/reset", timeout=10).raise_for_status()

    def applications_by_referrer(self) -> dict[str, int]:
        body = httpx.get(f"{self.kompliant.url}/_fake/workflows", timeout=10).json()
        return {str(k): int(v) for k, v in body["business_applications_by_referrer"].items()}

    # the bridge's own records
    def stream(self) -> list[tuple[str, str, str]]:
        """(type, execution_id, event id) of every event in the stream, in order."""
        import json

        rows = []
        for _, fields in self.redis.xrange(self.settings.events_stream):
            event = json.loads(fields[b"event"])
            rows.append((event["type"], event.get("execution_id") or "", event["id"]))
        return rows

    def types(self, execution_id: str) -> list[str]:
        from workers.fanout.publisher import Publisher

        return [e.type for e in Publisher(self.redis, self.settings).timeline(execution_id)]

    def is_done(self, execution_id: str) -> bool:
        types = self.types(execution_id)
        if not any(t in types for t in TERMINAL_TYPES):
            return False
        if self.scenario_of.get(execution_id) == "approved":
            return "kompliant.workflow.started" in types
        return True

    def start_applications(self, scenarios: list[str], timeout: float = 60) -> list[str]:
        """Start one application per scenario through the commands API; returns their execution ids."""
        from ulid import ULID

        from workers.jobs import api as commands_api

        commands: dict[str, str] = {}
        for scenario in scenarios:
            form = {
                "email": f"{str(ULID()).lower()}@example.com",
                "first_name": "Ana",
                "last_name_1": "López",
            }
            command = commands_api.start_application(self.redis, form, scenario, settings=self.settings)
            commands[command] = scenario
        found: dict[str, str] = {}

        def all_started() -> bool:
            for command, scenario in commands.items():
                if command in found:
                    continue
                result = commands_api.command_result(self.redis, command)
                if result and isinstance(result.get("result"), dict):
                    found[command] = str(result["result"]["execution_id"])
                    self.scenario_of[found[command]] = scenario
            return len(found) == len(commands)

        try:
            wait_until(
                all_started, timeout=timeout, what=f"{len(commands)} applications to start", interval=0.1
            )
        except WaitTimeout as exc:
            raise AssertionError(f"{exc} ({len(found)} did)") from None
        return list(found.values())

    def wait_nip_phase(self, execution_ids: list[str], timeout: float = 60) -> None:
        fake = self.kiban.server.config.app.state.fake
        wait_until(
            lambda: all(fake.execution(e).phase in {"VALIDATE", "VALIDATE_2"} for e in execution_ids),
            timeout=timeout,
            what="the NIP phase",
            interval=0.1,
        )

    def validate_all(self, execution_ids: list[str], timeout: float = 60) -> None:
        """Validate each NIP as soon as the fake Kiban shows its execution waiting for it."""
        from workers.jobs import api as commands_api

        fake = self.kiban.server.config.app.state.fake
        pending = set(execution_ids)

        def step() -> bool:
            for execution_id in list(pending):
                if fake.execution(execution_id).phase in {"VALIDATE", "VALIDATE_2"}:
                    commands_api.validate_nip(self.redis, execution_id, "123456", settings=self.settings)
                    pending.discard(execution_id)
            return not pending

        wait_until(step, timeout=timeout, what=f"NIP phase of {len(pending)} executions", interval=0.1)

    def wait_callbacks_processed(self, timeout: float = 60) -> int:
        """Wait until every acknowledged callback (a dedupe key) has been processed by a worker (its
        ``callback.received`` once-key exists); returns how many there are."""
        from workers.core import keys

        acked = [k.decode().split(":", 2)[2] for k in self.redis.scan_iter(keys.dedupe("*"), count=1000)]
        left = list(acked)

        def processed() -> bool:
            left[:] = [e for e in left if not self.redis.exists(keys.event_once(e))]
            return not left

        try:
            wait_until(
                processed, timeout=timeout, what="acknowledged callbacks to be processed", interval=0.1
            )
        except WaitTimeout:
            raise AssertionError(f"{len(left)} acknowledged callbacks never processed: {left[:5]}") from None
        return len(acked)

    def wait_done(self, execution_ids: list[str], timeout: float, what: str) -> None:
        left = list(execution_ids)

        def done() -> bool:
            left[:] = [e for e in left if not self.is_done(e)]
            return not left

        try:
            wait_until(done, timeout=timeout, what=what, interval=0.25)
        except WaitTimeout:
            detail = {e: self.types(e)[-3:] for e in left[:5]}
            raise AssertionError(
                f"{len(left)} of {len(execution_ids)} not done ({what}); last events: {detail}"
            ) from None


@contextmanager
def bridge_stack(
    logdir: Path, extra_env: dict[str, str] | None = None, *, callback_base: str | None = None
) -> Iterator[Bridge]:
    """Redis (AOF), receiver (guarded protocol) and both fakes in threads; workers are started by the test.
    ``callback_base``: where Kiban is told to send callbacks (default: the receiver)."""
    from receiver.app import create_app
    from receiver.protocol import guarded_protocol
    from workers.core.settings import load_settings
    from workers.sandbox.fakes import kiban as fake_kiban
    from workers.sandbox.serving import ServerThread

    server = RedisServer(appendonly=True)
    server.start()
    client = redis.Redis.from_url(server.url)
    kompliant = ServerThread(fake_kompliant.create_app()).start()
    env_values = {**FAST_ENV, **(extra_env or {})}
    settings = load_settings(
        redis_url=server.url,
        bridge_callback_keys=CALLBACK_KEY,
        bridge_internal_keys=INTERNAL_KEY,
        kiban_api_key=KIBAN_KEY,
        kiban_workfloo_definition_id=DEFINITION,
        log_level="WARNING",
    )
    receiver = ServerThread(create_app(settings), http=guarded_protocol(settings))
    base = callback_base or receiver.url
    kiban = ServerThread(
        fake_kiban.create_app(
            KIBAN_KEY,
            end_callback_url=f"{base}/v1/kiban/executions/{{execution_id}}/finished",
            end_callback_api_key=CALLBACK_KEY,
        )
    ).start()
    receiver.start()
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "BRIDGE_PUBLIC_URL": base,
        "BRIDGE_CALLBACK_KEYS": CALLBACK_KEY,
        "KIBAN_BASE_URL": kiban.url,
        "KIBAN_API_KEY": KIBAN_KEY,
        "KIBAN_WORKFLOO_DEFINITION_ID": DEFINITION,
        "KOMPLIANT_BASE_URL": kompliant.url,
        "KOMPLIANT_API_KEY": fake_kompliant.DEFAULT_API_KEY,
        "KOMPLIANT_SECRET_KEY": fake_kompliant.DEFAULT_SECRET_KEY,
        "KOMPLIANT_AUTH_TOKEN": fake_kompliant.DEFAULT_AUTH_TOKEN,
        "KOMPLIANT_ACCOUNT_ID": fake_kompliant.DEFAULT_ACCOUNT_ID,
        **env_values,
    }
    bridge = Bridge(server, client, settings, receiver, kiban, kompliant, env, logdir)
    try:
        yield bridge
    finally:
        bridge.stop_all()
        receiver.stop()
        kiban.stop()
        kompliant.stop()
        client.close()
        server.close()
