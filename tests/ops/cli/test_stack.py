"""Every CLI command against a running embedded stack (real processes, real HTTP, real Redis)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests import ROOT
from workers.core.contract import JOB_SERIALIZER
from workers.sandbox.demo.model import AppRun
from workers.sandbox.demo.scenario import ScenarioRunner
from workers.sandbox.redis_server import free_port
from workers.sandbox.stack import Stack, StackConfig
from workers.sandbox.wait import wait_http, wait_until


@dataclass
class Running:
    stack: Stack
    execution_id: str
    run: AppRun


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    stack = Stack(StackConfig(workers=1, log_dir=tmp_path_factory.mktemp("stack-logs")))
    stack.start()
    try:
        run = AppRun(index=1, scenario="approved")
        runner = ScenarioRunner(stack, [run], timeout=40)
        try:
            runner.run()
        finally:
            runner.close()
        assert run.ok, (run.error, run.checks, run.event_types())
        assert run.execution_id
        yield Running(stack, run.execution_id, run)
    finally:
        stack.stop()


def cli(
    running: Running, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.ops.cli", *args],
        cwd=ROOT,
        env={**running.stack.env(), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_is_consistent(running: Running) -> None:
    for command in ("serve", "worker", "demo", "status", "check", "timeline", "events", "dlq"):
        result = cli(running, command, "--help")
        assert result.returncode == 0, command
        assert result.stdout.startswith(f"Usage: python -m workers.ops.cli {command}"), command
    result = cli(running, "status", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_status(running: Running) -> None:
    result = cli(running, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["workers"]) >= 1
    assert any(q["name"] == "workfloo" for q in report["queues"])
    assert report["stream"]["length"] >= len(running.run.events)
    assert running.execution_id in {e["execution_id"] for e in report["recent_events"]}
    human = cli(running, "status")
    assert human.returncode == 0
    assert "queues" in human.stdout and "workers: " in human.stdout


def test_check_passes_against_the_stack(running: Running) -> None:
    result = cli(running, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert "API key accepted" in result.stdout


def test_check_says_kiban_is_unreachable(running: Running) -> None:
    port = free_port()
    result = cli(running, "check", env={"BRIDGE_KIBAN_BASE_URL": f"http://127.0.0.1:{port}"})
    assert result.returncode == 1
    assert f"cannot reach Kiban at http://127.0.0.1:{port}" in result.stdout
    data = json.loads(cli(running, "check", "--json", env={"BRIDGE_KIBAN_API_KEY": "wrong"}).stdout)
    kiban = next(c for c in data["checks"] if c["name"] == "kiban")
    assert kiban == {"name": "kiban", "ok": False, "message": kiban["message"]}
    assert "rejected BRIDGE_KIBAN_API_KEY" in kiban["message"]


def test_check_says_kompliant_rejected_the_signature(running: Running) -> None:
    result = cli(running, "check", "--json", env={"BRIDGE_KOMPLIANT_SECRET_KEY": "d3Jvbmcgc2VjcmV0IGtleQ=="})
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["kiban"]["ok"] and checks["redis"]["ok"]
    assert not checks["kompliant"]["ok"]
    assert "rejected" in checks["kompliant"]["message"]


def test_timeline_cli_and_endpoint(running: Running) -> None:
    result = cli(running, "timeline", running.execution_id, "--json")
    assert result.returncode == 0
    body = json.loads(result.stdout)
    types = [e["type"] for e in body["events"]]
    assert (
        types.index("nip.delivered")
        < types.index("workfloo.completed")
        < types.index("kompliant.workflow.started")
    )
    human = cli(running, "timeline", running.execution_id)
    assert human.returncode == 0 and "kompliant.workflow.started" in human.stdout
    assert cli(running, "timeline", "ffffffffffffffffffffffff").returncode == 1

    url = f"{running.stack.internal_url}/v1/applications/{running.execution_id}/timeline"
    ok = httpx.get(url, headers={"x-api-key": running.stack.keys.internal})
    assert ok.status_code == 200
    assert [e["type"] for e in ok.json()["events"]] == types
    assert all(e["since_previous_ms"] >= 0 for e in ok.json()["events"])
    assert httpx.get(url, headers={"x-api-key": "wrong"}).status_code == 401
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"x-api-key": running.stack.keys.callback}).status_code == 401
    missing = httpx.get(
        url.replace(running.execution_id, "ffffffffffffffffffffffff"),
        headers={"x-api-key": running.stack.keys.internal},
    )
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_events_tail(running: Running) -> None:
    result = cli(running, "events", "tail", "--type", "kompliant.*", "--since", "0-0")
    assert result.returncode == 0, result.stderr
    assert "kompliant.workflow.started" in result.stdout
    assert "nip.sent" not in result.stdout


def test_serve_starts_and_stops_on_sigterm(running: Running) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.ops.cli",
            "serve",
            "--port",
            str(free_port()),
            "--internal-port",
            str(port),
        ],
        cwd=ROOT,
        env=running.stack.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=20)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM is its contract).
    assert process.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "Application shutdown complete" in err
    unset = cli(running, "serve", env={"REDIS_URL": ""})
    assert unset.returncode == 2 and "REDIS_URL" in unset.stderr


def test_worker_registers_and_stops_on_sigterm(running: Running) -> None:
    """``--queue`` (repeatable) names the queues, as the webhook delivery worker of compose and the
    manifests uses it."""
    from rq import Worker

    client = running.stack.redis()
    before = {w.name for w in Worker.all(connection=client)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.ops.cli",
            "worker",
            "--queue",
            "workfloo-webhooks",
            "--queue",
            "extra",
        ],
        cwd=ROOT,
        env=running.stack.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: {w.name for w in Worker.all(connection=client)} - before, timeout=20, what="the worker"
        )
        (new,) = [w for w in Worker.all(connection=client) if w.name not in before]
        assert new.queue_names() == ["workfloo-webhooks", "extra"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        client.close()
    assert process.returncode == 0, err[-2000:]


def test_dlq_list_and_replay(running: Running) -> None:
    from rq import Queue

    client = running.stack.redis()
    try:
        queue = Queue("workfloo", connection=client, serializer=JOB_SERIALIZER)
        job = queue.enqueue("json.loads", "{not json", job_id="demo-dead-letter")
        wait_until(
            lambda: job.id in queue.failed_job_registry.get_job_ids(), timeout=20, what="the dead letter"
        )
        listed = cli(running, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "demo-dead-letter" in listed.stdout
        replayed = cli(running, "dlq", "replay", "demo-dead-letter")
        assert replayed.returncode == 0, replayed.stderr
        missing = cli(running, "dlq", "replay", "no-such-job")
        assert missing.returncode != 0
    finally:
        client.close()


def test_demo_on_an_existing_redis(running: Running) -> None:
    # Another database of the same server: the module stack's worker must not take this demo's jobs.
    other_db = running.stack.redis_url.rsplit("/", 1)[0] + "/1"
    result = cli(
        running,
        "demo",
        "--applications",
        "1",
        "--workers",
        "1",
        "--redis-url",
        other_db,
        "--json",
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["applications"][0]["outcome"] == "approved"
    assert f"Redis {other_db}" in result.stderr
    bad = cli(running, "demo", "--redis-url", "http://nope")
    assert bad.returncode == 2 and "--redis-url" in bad.stderr
