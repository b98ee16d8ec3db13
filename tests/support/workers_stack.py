"""End-to-end stack for the worker tests (fixtures in conftest.py): a private redis-server, the real
receiver, fake Kiban and fake Kompliant over loopback HTTP, and real ``workfloo-bridge worker`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from ulid import ULID

from workers.core import keys
from workers.core.settings import Settings, load_settings
from workers.fanout.publisher import Publisher
from workers.jobs import api as commands_api
from workers.jobs import state
from workers.sandbox.fakes import kiban as fake_kiban
from workers.sandbox.fakes import kompliant as fake_kompliant
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import ServerThread
from workers.sandbox.wait import wait_until

BIN = Path(sys.executable).parent / "workfloo-bridge"
CALLBACK_KEY = "cb-key-e2e-0123456789"
INTERNAL_KEY = "internal-key-e2e-0123456789"
KIBAN_KEY = "kiban-test-key"
DEFINITION = "def-e2e"


@dataclass
class Bridge:
    redis_server: RedisServer
    redis: redis.Redis
    settings: Settings
    receiver: ServerThread
    kiban: ServerThread
    kompliant: ServerThread
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # --- processes ---------------------------------------------------------------------------
    def spawn(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.redis_server.dir / f"proc-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(BIN), *args],
            env={**self.env, **(extra_env or {})},
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_worker(
        self, *, scheduler: bool = True, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self.spawn("worker", "--scheduler" if scheduler else "--no-scheduler", extra_env=extra_env)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    # --- vendors -----------------------------------------------------------------------------
    @property
    def kiban_state(self) -> Any:
        return self.kiban.server.config.app.state.fake

    @property
    def kompliant_state(self) -> Any:
        return self.kompliant.server.config.app.state.fake

    def kiban_faults(self, **knobs: Any) -> None:
        httpx.post(f"{self.kiban.url}/_fake/faults", json=knobs).raise_for_status()

    def kompliant_faults(self, **knobs: Any) -> None:
        httpx.post(f"{self.kompliant.url}/_fake/faults", json=knobs).raise_for_status()

    def reset_faults(self) -> None:
        httpx.post(f"{self.kiban.url}/_fake/faults/reset").raise_for_status()
        httpx.post(f"{self.kompliant.url}/_fake/faults/reset").raise_for_status()

    def business_applications(self, execution_id: str) -> int:
        counts = self.kompliant_state.business_applications_by_referrer()
        return int(counts.get(execution_id, 0))

    def workflows_of(self, execution_id: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.kompliant.url}/_fake/workflows").json()
        return [
            w
            for w in body["workflows"]
            if (w.get("details") or {}).get("business_application_details", {}).get("referrer_value")
            == execution_id
        ]

    # --- the bridge --------------------------------------------------------------------------
    def start_application(self, scenario: str, email: str | None = None) -> str:
        form = {
            "email": email or f"{str(ULID()).lower()}@example.com",
            "first_name": "Ana",
            "last_name_1": "López",
        }
        command_id = commands_api.start_application(self.redis, form, scenario, settings=self.settings)

        def execution_id() -> str | None:
            result = commands_api.command_result(self.redis, command_id)
            if result and isinstance(result["result"], dict):
                return str(result["result"]["execution_id"])
            return None

        return str(wait_until(execution_id, timeout=15, what=f"start_application {scenario}"))

    def validate_nip(self, execution_id: str, nip: str = "123456") -> str:
        wait_until(
            lambda: self.kiban_state.execution(execution_id).phase in {"VALIDATE", "VALIDATE_2"},
            timeout=10,
            what="the NIP phase",
        )
        return commands_api.validate_nip(self.redis, execution_id, nip, settings=self.settings)

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

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.receiver.url}{path}", json=body, headers={"x-api-key": CALLBACK_KEY, **(headers or {})}
        )


def make_bridge(tmp_env: dict[str, str] | None = None) -> Iterator[Bridge]:
    from receiver.app import create_app

    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    kompliant = ServerThread(fake_kompliant.create_app()).start()
    # The receiver's port must be known before the fake Kiban is built (its end-of-workfloo URL).
    settings = load_settings(
        redis_url=server.url,
        bridge_callback_keys=CALLBACK_KEY,
        bridge_internal_keys=INTERNAL_KEY,
        kiban_api_key=KIBAN_KEY,
        kiban_workfloo_definition_id=DEFINITION,
        log_level="WARNING",
    )
    receiver = ServerThread(create_app(settings))
    kiban = ServerThread(
        fake_kiban.create_app(
            KIBAN_KEY,
            end_callback_url=f"{receiver.url}/v1/kiban/executions/{{execution_id}}/finished",
            end_callback_api_key=CALLBACK_KEY,
        )
    ).start()
    receiver.start()
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "BRIDGE_PUBLIC_URL": receiver.url,
        "BRIDGE_CALLBACK_KEYS": CALLBACK_KEY,
        "KIBAN_BASE_URL": kiban.url,
        "KIBAN_API_KEY": KIBAN_KEY,
        "KIBAN_WORKFLOO_DEFINITION_ID": DEFINITION,
        "KOMPLIANT_BASE_URL": kompliant.url,
        "KOMPLIANT_API_KEY": fake_kompliant.DEFAULT_API_KEY,
        "KOMPLIANT_SECRET_KEY": fake_kompliant.DEFAULT_SECRET_KEY,
        "KOMPLIANT_AUTH_TOKEN": fake_kompliant.DEFAULT_AUTH_TOKEN,
        "KOMPLIANT_ACCOUNT_ID": fake_kompliant.DEFAULT_ACCOUNT_ID,
        "RETRY_BASE_SECONDS": "0.05",
        "RETRY_CAP_SECONDS": "0.3",
        "RETRY_MAX_ATTEMPTS": "8",
        "NIP_RESEND_DELAY_SECONDS": "0.2",
        "WORKER_HEARTBEAT_SECONDS": "1",
        "WORKER_HEARTBEAT_GRACE_SECONDS": "2",
        "REAPER_INTERVAL_SECONDS": "0.5",
        "WORKER_TTL_SECONDS": "16",
        "HANDOFF_LOCK_TTL_SECONDS": "3",
        "RECONCILE_AFTER_SECONDS": "1",
        "RECONCILE_INTERVAL_SECONDS": "1",
        "RECONCILE_POLL_BACKOFF_SECONDS": "0.5",
        "RECONCILE_POLL_BACKOFF_CAP_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
        **(tmp_env or {}),
    }
    bridge = Bridge(server, client, settings, receiver, kiban, kompliant, env)
    try:
        yield bridge
    finally:
        bridge.stop_all()
        receiver.stop()
        kiban.stop()
        kompliant.stop()
        client.close()
        server.close()
