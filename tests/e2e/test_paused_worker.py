"""End to end, paused (not dead) workers and every worker down: real worker processes frozen with SIGSTOP
past heartbeat + grace, their job run to the end by another worker, then thawed; and a ``status`` run
while no worker is alive. No effect may happen twice and no job may be lost.

Sizes are the CI ones (heartbeat 1 s, grace 2 s); tests/resilience/test_paused_worker.py runs the long
variants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
from rq import Queue
from rq.job import Job, JobStatus

from tests.support.workers_stack import Bridge
from workers.core.contract import JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.jobs import api as commands_api
from workers.jobs import state
from workers.runtime.reaper import RQ_CLEANUP_MARGIN_SECONDS
from workers.sandbox.supervisor import Child
from workers.sandbox.wait import wait_until


def freeze(proc: Child) -> None:
    os.killpg(proc.pid, signal.SIGSTOP)


def thaw(proc: Child) -> None:
    os.killpg(proc.pid, signal.SIGCONT)


def kiban_executions(bridge: Bridge) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = httpx.get(f"{bridge.kiban_url}/_fake/executions", timeout=10).json()
    return body


def kiban_calls(bridge: Bridge) -> Counter[str]:
    """Successful Kiban API calls by route."""
    return Counter(route for _m, route, status in list(bridge.kiban_state.requests) if status < 300)


def started_events(bridge: Bridge) -> list[tuple[str, str]]:
    return [(t, ex) for t, ex, _id in bridge.stream() if t == T.APPLICATION_STARTED]


def finished_result(bridge: Bridge, job_id: str) -> Any:
    """The job's return value once RQ holds it FINISHED, else None."""
    job = Job.fetch(job_id, connection=bridge.redis, serializer=JOB_SERIALIZER)
    return job.return_value() if job.get_status(refresh=True) == JobStatus.FINISHED else None


def wait_running(bridge: Bridge, worker: str, job_id: str) -> None:
    wait_until(lambda: bridge.current_job(worker) == job_id, timeout=15, what=f"{worker} to run {job_id}")


def test_worker_paused_during_execute_leaves_one_started_application(bare_bridge: Bridge) -> None:
    paused_during_execute(bare_bridge)


def paused_during_execute(bridge: Bridge, worker_env: dict[str, str] | None = None) -> None:
    """Freeze the worker waiting for Kiban's ``execute``; another finishes the job; thaw the first."""
    paused = bridge.start_worker("paused-a", extra_env=worker_env)
    bridge.kiban_faults(latency_ms=4000)  # execute answers after 4 s: the worker is frozen meanwhile
    command_id = commands_api.start_application(
        bridge.redis, bridge.form(), "approved", settings=bridge.settings
    )
    wait_running(bridge, "paused-a", command_id)
    time.sleep(2.0)  # inside execute, after at least one heartbeat
    freeze(paused)
    try:
        bridge.kiban_faults(latency_ms=0)
        bridge.start_worker("takes-over", extra_env=worker_env)

        def finished() -> str | None:
            result = finished_result(bridge, command_id)
            return str(result["execution_id"]) if isinstance(result, dict) else None

        execution_id = wait_until(finished, timeout=30, what="the other worker to start the application")
    finally:
        thaw(paused)
    # The thawed run gets its (late) execute answer and must stop there, quietly.
    wait_until(lambda: bridge.current_job("paused-a") is None, timeout=20, what="the thawed run to end")
    time.sleep(1.0)

    executions = kiban_executions(bridge)
    with_form = [ex["id"] for ex in executions if ex["current_node_type"] != "FORM"]
    assert with_form == [execution_id]
    assert len(executions) <= 2  # at most one orphan execution, never given a form
    assert kiban_calls(bridge)["sendWorkflooNip"] == 1
    assert kiban_calls(bridge)["executeWorkflooForm"] == 1
    assert started_events(bridge) == [(T.APPLICATION_STARTED, execution_id)]
    # The thawed run recorded nothing: the job's status and result are the other worker's.
    assert finished_result(bridge, command_id) == {"execution_id": execution_id}


def test_worker_paused_during_workflow_create_leaves_one_business_application(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    paused = bridge.start_worker("paused-k")
    execution_id = bridge.start_application("approved")
    bridge.wait_types(execution_id, T.NIP_DELIVERED)
    bridge.kompliant_faults(latency_ms=4000)
    bridge.validate_nip(execution_id)
    # The subject record is anchored: the next call is workflow.create, answered after 4 s.
    wait_until(
        lambda: bridge.field(execution_id, state.KOMPLIANT_SUBJECT_RECORD), timeout=30, what="subject record"
    )
    time.sleep(1.0)
    freeze(paused)
    try:
        bridge.kompliant_faults(latency_ms=0)
        bridge.start_worker("takes-over")
        bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED, timeout=40)
    finally:
        thaw(paused)
    wait_until(lambda: bridge.current_job("paused-k") is None, timeout=20, what="the thawed run to end")
    time.sleep(1.0)
    assert bridge.business_applications(execution_id) == 1
    [workflow] = bridge.workflows_of(execution_id)
    assert workflow["state"] == "STARTED"
    types = Counter(bridge.types(execution_id))
    assert types[T.KOMPLIANT_WORKFLOW_CREATED] == 1
    assert types[T.KOMPLIANT_WORKFLOW_STARTED] == 1
    assert types[T.ACTION_FAILED] == 0


def test_status_while_every_worker_is_down_loses_no_job(bare_bridge: Bridge) -> None:
    """Every worker dead for longer than RQ's cleanup window (time scaled: the dead worker's
    started-registry entry is moved that far into the past), then ``workfloo-bridge status``: the count
    must not let RQ fail the job; once a worker is back, the job runs to its end."""
    bridge = bare_bridge
    worker = bridge.start_worker("dies")
    bridge.kiban_faults(latency_ms=3000)
    command_id = commands_api.start_application(
        bridge.redis, bridge.form(), "approved", settings=bridge.settings
    )
    wait_running(bridge, "dies", command_id)
    bridge.kill(worker)
    bridge.kiban_faults(latency_ms=0)
    queue = Queue(bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER)
    registry = queue.started_job_registry.key
    past = time.time() - RQ_CLEANUP_MARGIN_SECONDS - 10
    for entry in bridge.redis.zrange(registry, 0, -1):
        bridge.redis.zadd(registry, {entry: past})
    bridge.redis.delete("rq:worker:dies")  # its worker key is long expired too

    out = subprocess.run(
        [sys.executable, "-m", "workers.ops.cli", "status", "--json"],
        env={**os.environ, **bridge.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = Job.fetch(command_id, connection=bridge.redis, serializer=JOB_SERIALIZER)
    assert job.get_status(refresh=True) != JobStatus.FAILED

    bridge.start_worker("back")
    wait_until(
        lambda: finished_result(bridge, command_id),
        timeout=30,
        what="the job to finish after the workers came back",
    )
