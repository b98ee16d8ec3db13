"""End to end, recovery: a worker SIGKILLed between the Kompliant create call and the publish, and a
dropped end-of-workfloo callback healed by the reconciler on RQ's cron scheduler."""

from __future__ import annotations

import time

from workers_stack import Bridge, wait_for

from workers import state
from workers.events import EventType as T


def test_sigkill_mid_handoff_finishes_elsewhere_with_one_application(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    worker = bridge.start_worker()
    execution_id = bridge.start_application("approved")
    # Slow Kompliant down so the hand-off is in flight when the worker dies: the subject record is
    # persisted, then workflow.create is sent and the worker is killed while it waits for the answer.
    bridge.kompliant_faults(latency_ms=1500)
    bridge.validate_nip(execution_id)
    wait_for(
        lambda: bridge.field(execution_id, state.KOMPLIANT_SUBJECT_RECORD), 20, "the subject record anchor"
    )
    time.sleep(0.3)  # workflow.create is now on the wire
    bridge.kill(worker)  # SIGKILL to the whole process group
    killed_at = time.monotonic()
    assert bridge.field(execution_id, state.KOMPLIANT_WORKFLOW) is None
    bridge.kompliant_faults(latency_ms=0)
    # The fake finishes the in-flight create although its client is gone.
    wait_for(lambda: bridge.business_applications(execution_id) == 1, 10, "the orphaned create to land")

    bridge.start_worker()
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)
    assert time.monotonic() - killed_at < 30
    assert bridge.business_applications(execution_id) == 1
    [workflow] = bridge.workflows_of(execution_id)
    assert workflow["state"] == "STARTED"
    created = bridge.events(execution_id, T.KOMPLIANT_WORKFLOW_CREATED)
    assert len(created) == 1 and created[0].data["adopted"] is True


def test_dropped_end_callbacks_are_healed_by_the_reconciler(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    bridge.start_worker()
    execution_id = bridge.start_application("approved")
    bridge.wait_types(execution_id, T.NIP_DELIVERED)
    # From now on Kiban loses every callback: the terminal status webhook and the end-of-workfloo call.
    bridge.kiban_faults(drop_callbacks_probability=1.0)
    bridge.validate_nip(execution_id)
    wait_for(lambda: bridge.kiban_state.execution(execution_id).is_terminal, 10, "Kiban to finish")
    time.sleep(1.5)
    assert T.WORKFLOO_COMPLETED not in bridge.types(execution_id)
    assert bridge.is_open(execution_id)

    bridge.spawn("scheduler")  # RQ's CronScheduler enqueues the reconciler sweep every second
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)
    completed = bridge.events(execution_id, T.WORKFLOO_COMPLETED)[0].data
    assert completed["trigger"] == "reconciler"
    assert bridge.business_applications(execution_id) == 1
    assert not bridge.is_open(execution_id)
