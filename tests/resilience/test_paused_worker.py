"""Paused workers and every worker down, at production sizes (slow; CI variants in
tests/e2e/test_paused_worker.py): production heartbeat and grace (3 + 7 s), workers frozen for 30 s, and
every worker gone for longer than RQ's cleanup window while ``workfloo-bridge status`` runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from tests.e2e.test_paused_worker import (
    finished_result,
    freeze,
    kiban_calls,
    kiban_executions,
    paused_during_execute,
    started_events,
    thaw,
)
from tests.resilience.conftest import Figures
from tests.support.workers_stack import Bridge, make_bridge
from workers.core.contract import JOB_SERIALIZER
from workers.jobs import api as commands_api
from workers.sandbox.wait import wait_until

pytestmark = pytest.mark.slow

PRODUCTION_LIVENESS = {
    "BRIDGE_WORKER_HEARTBEAT_SECONDS": "3",
    "BRIDGE_WORKER_HEARTBEAT_GRACE_SECONDS": "7",
    "BRIDGE_REAPER_INTERVAL_SECONDS": "3",
    "BRIDGE_WORKER_TTL_SECONDS": "20",
}


@pytest.fixture
def production_bridge() -> Iterator[Bridge]:
    yield from make_bridge(PRODUCTION_LIVENESS)


def test_workers_frozen_for_30_s_inside_execute_repeat_nothing(
    production_bridge: Bridge, figures: Figures
) -> None:
    bridge = production_bridge
    frozen = [bridge.start_worker(f"frozen-{n}") for n in range(3)]
    bridge.kiban_faults(latency_ms=5000)
    commands = [
        commands_api.start_application(bridge.redis, bridge.form(), "approved", settings=bridge.settings)
        for _ in range(3)
    ]
    for command in commands:
        wait_until(
            lambda c=command: any(bridge.current_job(f"frozen-{n}") == c for n in range(3)),
            timeout=20,
            what="every command running",
        )
    time.sleep(3.5)  # inside execute, after a heartbeat
    for proc in frozen:
        freeze(proc)
    paused_at = time.monotonic()
    try:
        bridge.kiban_faults(latency_ms=0)
        bridge.start_worker("takes-over-1")
        bridge.start_worker("takes-over-2")
        results = [
            wait_until(lambda c=c: finished_result(bridge, c), timeout=90, what="the takeover")
            for c in commands
        ]
        figures.add("from freeze to every command finished elsewhere (s)", time.monotonic() - paused_at)
        time.sleep(max(0.0, 30 - (time.monotonic() - paused_at)))
    finally:
        for proc in frozen:
            thaw(proc)
    for n in range(3):
        wait_until(lambda n=n: bridge.current_job(f"frozen-{n}") is None, timeout=30, what="thawed runs end")
    time.sleep(2)

    executions = kiban_executions(bridge)
    ids = sorted(str(r["execution_id"]) for r in results)
    with_form = sorted(ex["id"] for ex in executions if ex["current_node_type"] != "FORM")
    calls = kiban_calls(bridge)
    figures.add("Kiban executions (3 commands)", len(executions))
    figures.add("executions given a form", len(with_form))
    figures.add("NIPs sent", calls["sendWorkflooNip"])
    figures.add("application.started", len(started_events(bridge)))
    assert with_form == ids
    assert calls["sendWorkflooNip"] == 3
    assert calls["executeWorkflooForm"] == 3
    assert sorted(ex for _t, ex in started_events(bridge)) == ids
    assert [finished_result(bridge, c) for c in commands] == results


def test_every_worker_down_past_rqs_cleanup_window_while_status_runs(
    production_bridge: Bridge, figures: Figures
) -> None:
    bridge = production_bridge
    workers = [bridge.start_worker(f"down-{n}") for n in range(2)]
    bridge.kiban_faults(latency_ms=4000)
    commands = [
        commands_api.start_application(bridge.redis, bridge.form(), "approved", settings=bridge.settings)
        for _ in range(4)
    ]
    wait_until(
        lambda: all(bridge.current_job(f"down-{n}") for n in range(2)), timeout=20, what="both workers busy"
    )
    for proc in workers:
        bridge.kill(proc)
    bridge.kiban_faults(latency_ms=0)
    down_at = time.monotonic()
    runs = 0
    while time.monotonic() - down_at < 75:  # RQ's window: heartbeat + grace + 60 s margin = 70 s
        out = subprocess.run(
            [sys.executable, "-m", "workers.ops.cli", "status", "--json"],
            env={**os.environ, **bridge.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        runs += 1
        time.sleep(5)
    figures.add("status runs while every worker was down", runs)
    failed = FailedJobRegistry(
        bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER
    )
    assert failed.get_job_count(cleanup=False) == 0
    back_at = time.monotonic()
    bridge.start_worker("back")
    for command in commands:
        wait_until(lambda c=command: finished_result(bridge, c), timeout=60, what="every command finished")
    figures.add("from workers back to every command finished (s)", time.monotonic() - back_at)
    statuses = Counter(
        Job.fetch(c, connection=bridge.redis, serializer=JOB_SERIALIZER).get_status(refresh=True)
        for c in commands
    )
    figures.add(
        "commands finished / failed", f"{statuses[JobStatus.FINISHED]} / {statuses[JobStatus.FAILED]}"
    )
    assert statuses == Counter({JobStatus.FINISHED: 4})
    assert kiban_calls(bridge)["sendWorkflooNip"] == 4


def test_fork_per_job_worker_paused_during_execute_repeats_nothing(bare_bridge: Bridge) -> None:
    """The same with ``BridgeWorker``: the thawed work-horse stands down and exits cleanly, so its
    parent records no failure beside the newer run's result."""
    paused_during_execute(bare_bridge, {"BRIDGE_WORKER_CLASS": "workers.runtime.worker.BridgeWorker"})
    failed = FailedJobRegistry(
        bare_bridge.settings.bridge_queue, connection=bare_bridge.redis, serializer=JOB_SERIALIZER
    )
    assert failed.get_job_count(cleanup=False) == 0
