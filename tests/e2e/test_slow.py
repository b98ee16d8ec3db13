"""Long resilience variant (``-m slow``): many applications at once through lossy, duplicating callbacks,
a Kompliant 503 burst, the reconciler, and a worker SIGKILLed in the middle. Still exactly one business
application per approved execution and none for the others."""

from __future__ import annotations

import pytest

from tests.support.workers_stack import Bridge
from workers.core.events import EventType as T
from workers.sandbox.wait import wait_until

SCENARIOS = ["approved", "rejected", "nip-error", "abandoned"] * 4


@pytest.mark.slow
def test_many_applications_under_faults(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    victim = bridge.start_worker()
    bridge.start_worker()
    bridge.spawn("scheduler")
    bridge.kiban_faults(duplicate_callbacks=2, drop_callbacks_probability=0.3)
    bridge.kompliant_faults(fail_next=5, fail_status=503, fail_retry_after=None)
    executions = {bridge.start_application(s): s for s in SCENARIOS}
    for index, execution_id in enumerate(executions):
        # The applicant types the NIP once it arrived (Kiban refuses it before: NIP_NOT_DELIVERED).
        wait_until(
            lambda e=execution_id: any(
                ev.get("status") == "SUCCESS" for ev in bridge.kiban_state.execution(e).link_events
            ),
            timeout=20,
            what="the NIP delivery",
        )
        bridge.validate_nip(execution_id)
        if index == len(executions) // 2:
            bridge.kill(victim)
            bridge.start_worker()
    terminal = {
        "approved": T.KOMPLIANT_WORKFLOW_STARTED,
        "nip-error": T.KOMPLIANT_WORKFLOW_STARTED,
        "rejected": T.WORKFLOO_COMPLETED,
        "abandoned": T.WORKFLOO_ABANDONED,
    }
    for execution_id, scenario in executions.items():
        bridge.wait_types(execution_id, terminal[scenario], timeout=60)
    for execution_id, scenario in executions.items():
        expected = 1 if scenario in {"approved", "nip-error"} else 0
        assert bridge.business_applications(execution_id) == expected, (scenario, execution_id)
        finished = [
            t
            for t in bridge.types(execution_id)
            if t.startswith("workfloo.") and t != T.WORKFLOO_STATUS_CHANGED
        ]
        assert len(finished) == 1, (scenario, finished)
    wait_until(
        lambda: not any(bridge.is_open(e) for e in executions),
        timeout=30,
        what="every execution to be closed",
    )
