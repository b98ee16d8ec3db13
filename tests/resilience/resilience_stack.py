"""The bridge as separate processes, as it runs in production: a private redis-server (AOF), the fake
vendors (``python -m workers.fakes.*``), the receiver (``workfloo-bridge serve``) and, when asked, the
workers (``workfloo-bridge worker``). Every process writes its stderr (and stdout) to its own log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from workers.fakes import kompliant as fake_kompliant
from workers.redis_server import RedisServer, free_port

BIN = Path(sys.executable).parent / "workfloo-bridge"
CALLBACK_KEY = "cb-key-resilience-5e1d0c2b9a"
INTERNAL_KEY = "internal-key-resilience-77c1d3e0"
KIBAN_KEY = "kiban-key-resilience-0f4a8e6d"
DEFINITION = "def-resilience"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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
            [sys.executable, "-m", "workers.fakes.kompliant", "--port", str(ports["kompliant"])],
        )
        stack.spawn(
            "kiban",
            [
                sys.executable, "-m", "workers.fakes.kiban", "--port", str(ports["kiban"]),
                "--api-key", KIBAN_KEY,
                "--end-callback-url", f"{receiver_url}/v1/kiban/executions/{{execution_id}}/finished",
                "--end-callback-api-key", CALLBACK_KEY,
                "--decision-delay", "0.1", "--nip-event-delay", "0.05",
                *(kiban_args or []),
            ],
        )  # fmt: skip
        stack.spawn("receiver", [str(BIN), "serve", "--port", str(ports["receiver"])])
        wait_for(lambda: _up(f"{receiver_url}/healthz"), 20, "the receiver")
        wait_for(lambda: _up(f"{stack.kiban_url}/_fake/executions"), 20, "the fake Kiban")
        wait_for(lambda: _up(f"{stack.kompliant_url}/_fake/workflows"), 20, "the fake Kompliant")
        yield stack
    finally:
        stack.stop_all()
        client.close()
        server.close()
