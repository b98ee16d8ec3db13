"""End to end, recovery: a worker SIGKILLed between the Kompliant create call and the publish, and a
dropped end-of-workfloo callback healed by the reconciler on RQ's cron scheduler."""

from __future__ import annotations

import time

from rq.job import Job, JobStatus

from tests.support.workers_stack import Bridge
from workers.core.contract import CRASH_REQUEUES, JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.jobs import state
from workers.sandbox.wait import wait_until


def test_sigkill_mid_handoff_finishes_elsewhere_with_one_application(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    worker = bridge.start_worker()
    execution_id = bridge.start_application("approved")
    # Slow every Kompliant call down so the worker is mid hand-off for seconds: the business application
    # exists at Kompliant, while the worker persists its id, publishes, and waits on workflow.start.
    bridge.kompliant_faults(latency_ms=1500)
    bridge.validate_nip(execution_id)
    wait_until(
        lambda: bridge.business_applications(execution_id) == 1,
        timeout=20,
        what="workflow.create at Kompliant",
    )
    bridge.kill(worker)  # SIGKILL to the whole process group
    killed_at = time.monotonic()
    persisted = bridge.field(execution_id, state.KOMPLIANT_WORKFLOW)
    assert bridge.field(execution_id, state.KOMPLIANT_STARTED) is None
    assert T.KOMPLIANT_WORKFLOW_STARTED not in bridge.types(execution_id)
    bridge.kompliant_faults(latency_ms=0)

    bridge.start_worker()
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)

    def recovered() -> bool:
        # The killed job itself: requeued by the reaper (same id) and finished by the new worker.
        for key in bridge.redis.scan_iter("rq:job:*"):
            job_id = key.decode().removeprefix("rq:job:")
            if ":" in job_id:
                continue
            job = Job.fetch(job_id, connection=bridge.redis, serializer=JOB_SERIALIZER)
            if job.meta.get(CRASH_REQUEUES) and job.get_status() == JobStatus.FINISHED:
                return True
        return False

    wait_until(recovered, timeout=30, what="the killed job to be requeued and finished")
    assert time.monotonic() - killed_at < 30
    assert bridge.business_applications(execution_id) == 1
    [workflow] = bridge.workflows_of(execution_id)
    assert workflow["state"] == "STARTED"
    created = bridge.events(execution_id, T.KOMPLIANT_WORKFLOW_CREATED)
    assert len(created) == 1
    # Killed before the id was persisted: the retry adopted the existing application via workflow.list.
    assert created[0].data["adopted"] is (persisted is None)
    assert created[0].data["workflow_id"] == workflow["workflow_id"]


def test_dropped_end_callbacks_are_healed_by_the_reconciler(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    bridge.start_worker()
    execution_id = bridge.start_application("approved")
    bridge.wait_types(execution_id, T.NIP_DELIVERED)
    # From now on Kiban loses every callback: the terminal status webhook and the end-of-workfloo call.
    bridge.kiban_faults(drop_callbacks_probability=1.0)
    bridge.validate_nip(execution_id)
    wait_until(
        lambda: bridge.kiban_state.execution(execution_id).is_terminal, timeout=10, what="Kiban to finish"
    )
    time.sleep(1.5)
    assert T.WORKFLOO_COMPLETED not in bridge.types(execution_id)
    assert bridge.is_open(execution_id)

    bridge.spawn("scheduler")  # RQ's CronScheduler enqueues the reconciler sweep every second
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)
    completed = bridge.events(execution_id, T.WORKFLOO_COMPLETED)[0].data
    assert completed["trigger"] == "reconciler"
    assert bridge.business_applications(execution_id) == 1
    assert not bridge.is_open(execution_id)
