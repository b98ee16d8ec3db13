"""``Bridge``: a started ``workers.sandbox.stack.Stack`` plus what the end-to-end and resilience tests ask of
it (start applications, validate NIPs, read the event stream, the fakes' records). Built by
``tests.support.workers_stack`` and ``tests.support.resilience_stack``."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from ulid import ULID

from workers.core import keys
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import api as commands_api
from workers.jobs import state
from workers.sandbox.serving import ServerThread
from workers.sandbox.stack import Stack, StackConfig
from workers.sandbox.supervisor import Child
from workers.sandbox.wait import WaitTimeout, wait_until

BIN = Path(sys.executable).parent / "workfloo-bridge"
TERMINAL_TYPES = ("workfloo.completed", "workfloo.failed", "workfloo.abandoned")
NIP_PHASES = {"VALIDATE", "VALIDATE_2"}


class Bridge:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.settings: Settings = stack.settings()
        self.scenario_of: dict[str, str] = {}
        self._spawned = 0

    # --- the stack's pieces ------------------------------------------------------------------
    @property
    def redis(self) -> redis.Redis:
        assert self.stack.client is not None
        return self.stack.client

    @property
    def redis_server(self) -> Any:
        return self.stack.redis_server

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env()

    @property
    def logdir(self) -> Path:
        return self.stack.log_dir

    @property
    def procs(self) -> list[Child]:
        return list(self.stack.supervisor.children)

    @property
    def receiver_url(self) -> str:
        """The public listener (Kiban's callbacks)."""
        return self.stack.receiver_url

    @property
    def internal_url(self) -> str:
        """The internal listener (commands, timeline, /readyz, /metrics)."""
        return self.stack.internal_url

    @property
    def kiban_url(self) -> str:
        return self.stack.kiban_url

    @property
    def kompliant_url(self) -> str:
        return self.stack.kompliant_url

    @property
    def receiver(self) -> ServerThread:
        return self.stack.threads["receiver"]

    @property
    def kiban(self) -> ServerThread:
        return self.stack.threads["fake-kiban"]

    @property
    def kompliant(self) -> ServerThread:
        return self.stack.threads["fake-kompliant"]

    @property
    def kiban_state(self) -> Any:
        return self.stack.fake_state("kiban")

    @property
    def kompliant_state(self) -> Any:
        return self.stack.fake_state("kompliant")

    # --- processes ---------------------------------------------------------------------------
    def spawn(self, *args: str, extra_env: dict[str, str] | None = None) -> Child:
        """``workfloo-bridge ARGS`` with the stack's environment."""
        self._spawned += 1
        return self.stack.spawn(f"{args[0]}-{self._spawned}", *args, env=extra_env)

    def start_worker(
        self, name: str | None = None, *, scheduler: bool = True, extra_env: dict[str, str] | None = None
    ) -> Child:
        return self.stack.add_worker(name, scheduler=scheduler, env=extra_env)

    def kill(self, proc: Child, sig: int = signal.SIGKILL) -> None:
        self.stack.kill(proc, sig)

    def log_lines(self) -> list[tuple[str, str]]:
        return self.stack.log_lines()

    def current_job(self, worker_name: str) -> str | None:
        """Id of a job the worker is running now (RQ 3 keeps a worker's executions in a set)."""
        for member in self.redis.smembers(f"rq:worker:{worker_name}:executions"):
            return str(member.decode().rsplit(":", 1)[0])
        return None

    # --- vendors -----------------------------------------------------------------------------
    def faults(self, which: str, **knobs: Any) -> None:
        self.stack.set_faults(which, **knobs)

    def kiban_faults(self, **knobs: Any) -> None:
        self.stack.set_faults("kiban", **knobs)

    def kompliant_faults(self, **knobs: Any) -> None:
        self.stack.set_faults("kompliant", **knobs)

    def reset_faults(self) -> None:
        self.stack.reset_faults()

    def business_applications(self, execution_id: str) -> int:
        counts = self.kompliant_state.business_applications_by_referrer()
        return int(counts.get(execution_id, 0))

    def applications_by_referrer(self) -> dict[str, int]:
        body = httpx.get(f"{self.kompliant_url}/_fake/workflows", timeout=10).json()
        return {str(k): int(v) for k, v in body["business_applications_by_referrer"].items()}

    def workflows_of(self, execution_id: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.kompliant_url}/_fake/workflows").json()
        return [
            w
            for w in body["workflows"]
            if (w.get("details") or {}).get("business_application_details", {}).get("referrer_value")
            == execution_id
        ]

    # --- the bridge --------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.receiver_url}{path}",
            json=body,
            headers={"x-api-key": self.stack.keys.callback, **(headers or {})},
        )

    @staticmethod
    def form(email: str | None = None) -> dict[str, str]:
        return {
            "email": email or f"{str(ULID()).lower()}@example.com",
            "first_name": "Ana",
            "last_name_1": "López",
        }

    def start_application(self, scenario: str, email: str | None = None) -> str:
        command_id = commands_api.start_application(
            self.redis, self.form(email), scenario, settings=self.settings
        )

        def execution_id() -> str | None:
            result = commands_api.command_result(self.redis, command_id)
            if result and isinstance(result["result"], dict):
                return str(result["result"]["execution_id"])
            return None

        return str(wait_until(execution_id, timeout=15, what=f"start_application {scenario}"))

    def start_applications(self, scenarios: list[str], timeout: float = 60) -> list[str]:
        """Start one application per scenario through the commands API; returns their execution ids."""
        commands: dict[str, str] = {}
        for scenario in scenarios:
            command = commands_api.start_application(
                self.redis, self.form(), scenario, settings=self.settings
            )
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

    def validate_nip(self, execution_id: str, nip: str = "123456") -> str:
        wait_until(
            lambda: self.kiban_state.execution(execution_id).phase in NIP_PHASES,
            timeout=10,
            what="the NIP phase",
        )
        return commands_api.validate_nip(self.redis, execution_id, nip, settings=self.settings)

    def wait_nip_phase(self, execution_ids: list[str], timeout: float = 60) -> None:
        fake = self.kiban_state
        wait_until(
            lambda: all(fake.execution(e).phase in NIP_PHASES for e in execution_ids),
            timeout=timeout,
            what="the NIP phase",
            interval=0.1,
        )

    def validate_all(self, execution_ids: list[str], timeout: float = 60) -> None:
        """Validate each NIP as soon as the fake Kiban shows its execution waiting for it."""
        fake = self.kiban_state
        pending = set(execution_ids)

        def step() -> bool:
            for execution_id in list(pending):
                if fake.execution(execution_id).phase in NIP_PHASES:
                    commands_api.validate_nip(self.redis, execution_id, "123456", settings=self.settings)
                    pending.discard(execution_id)
            return not pending

        wait_until(step, timeout=timeout, what=f"NIP phase of {len(pending)} executions", interval=0.1)

    # --- the bridge's own records ------------------------------------------------------------
    def stream(self) -> list[tuple[str, str, str]]:
        """(type, execution_id, event id) of every event in the stream, in order."""
        rows = []
        for _, fields in self.redis.xrange(self.settings.events_stream):
            event = json.loads(fields[b"event"])
            rows.append((event["type"], event.get("execution_id") or "", event["id"]))
        return rows

    def types(self, execution_id: str) -> list[str]:
        return [event.type for event in Publisher(self.redis, self.settings).timeline(execution_id)]

    def events(self, execution_id: str, type_: str) -> list[Any]:
        return [e for e in Publisher(self.redis, self.settings).timeline(execution_id) if e.type == type_]

    def field(self, execution_id: str, name: str) -> str | None:
        return state.get_field(self.redis, execution_id, name)

    def wait_types(self, execution_id: str, *wanted: str, timeout: float = 20) -> list[str]:
        return list(
            wait_until(
                lambda: (t := self.types(execution_id)) and all(w in t for w in wanted) and t,
                timeout=timeout,
                what=f"events {wanted} for {execution_id}",
            )
        )

    def is_open(self, execution_id: str) -> bool:
        return self.redis.zscore(keys.OPEN_EXECUTIONS, execution_id) is not None

    def is_done(self, execution_id: str) -> bool:
        types = self.types(execution_id)
        if not any(t in types for t in TERMINAL_TYPES):
            return False
        if self.scenario_of.get(execution_id) == "approved":
            return "kompliant.workflow.started" in types
        return True

    def wait_callbacks_processed(self, timeout: float = 60) -> int:
        """Wait until every acknowledged callback (a dedupe key) has been processed by a worker (its
        ``callback.received`` once-key exists); returns how many there are."""
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
def running_bridge(config: StackConfig, *, keep_logs: bool = True) -> Iterator[Bridge]:
    """Start the stack, yield its ``Bridge``, stop everything (and drop the logs unless ``keep_logs``)."""
    stack = Stack(config).start()
    try:
        yield Bridge(stack)
    finally:
        stack.stop()
        if not keep_logs:
            stack.cleanup_logs()
