"""A Kompliant outage several times longer than the retry budget: 503 without ``Retry-After`` on every
request while approved executions finish. The hand-off jobs spend their budget and are dead-lettered
(``job.dead_lettered``), the executions stay on the follow-up set, and the reconciler (RQ's cron
scheduler, a real process) re-runs them until Kompliant answers again: after recovery, exactly one
started business application per approved execution, within the scaled bound of the guarantee (with
the defaults, two minutes). Time is scaled by settings: budget, backoff cap, sweep interval."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.resilience_stack import ONCE_PER_EXECUTION, bridge_stack
from workers.core import keys
from workers.sandbox.wait import wait_until


def _outage_past_budget(
    tmp_path: Path,
    figures: Any,
    *,
    budget: float,
    outage: float,
    scenarios: list[str],
    bound: float,
) -> None:
    env = {
        "BRIDGE_RETRY_BUDGET_SECONDS": str(budget),
        "BRIDGE_RETRY_BASE_SECONDS": "0.05",
        "BRIDGE_RETRY_CAP_SECONDS": "0.3",
        "BRIDGE_RECONCILE_INTERVAL_SECONDS": "1",
        "BRIDGE_FOLLOWUP_RETRY_SECONDS": "0.5",
    }
    section = f"Kompliant outage {outage:g} s, retry budget {budget:g} s"
    with bridge_stack(tmp_path, env) as bridge:
        bridge.start_worker("w-0")
        bridge.start_worker("w-1")
        bridge.spawn("scheduler")
        executions = bridge.start_applications(scenarios, timeout=60)
        approved = [e for e in executions if bridge.scenario_of[e] == "approved"]
        bridge.kompliant_faults(fail_next=10**6, fail_status=503, fail_retry_after=None)
        down_at = time.monotonic()
        bridge.validate_all(executions, timeout=60)

        def dead_lettered() -> set[str]:
            return {e for t, e, _ in bridge.stream() if t == "job.dead_lettered"}

        # Every approved hand-off spent its budget and was dead-lettered while Kompliant was down.
        wait_until(
            lambda: set(approved) <= dead_lettered(), timeout=outage + 30, what="the budget to be spent"
        )
        assert time.monotonic() - down_at < outage, "the budget was not spent inside the outage"
        assert not any(bridge.business_applications(e) for e in approved)
        pending = {m.decode() for m in bridge.redis.zrange(keys.FOLLOWUP_PENDING, 0, -1)}
        assert set(approved) <= pending, "a dead-lettered hand-off left the follow-up set"
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        bridge.reset_faults()
        recovered_at = time.monotonic()
        bridge.wait_done(executions, bound + 30, "every application after Kompliant recovered")
        after_recovery = time.monotonic() - recovered_at

        counts = bridge.applications_by_referrer()
        for execution_id in executions:
            expected = 1 if execution_id in approved else 0
            assert counts.get(execution_id, 0) == expected, execution_id
        effects = [(t, e) for t, e, _ in bridge.stream() if t in ONCE_PER_EXECUTION]
        assert len(effects) == len(set(effects)), "an effect was published twice"
        wait_until(
            lambda: bridge.redis.zcard(keys.FOLLOWUP_PENDING) == 0,
            timeout=5,
            what="the follow-up set to empty",
        )
        letters = Counter(e for t, e, _ in bridge.stream() if t == "job.dead_lettered")

    figures.add("applications (approved)", f"{len(executions)} ({len(approved)})", section)
    figures.add("dead letters during the outage", sum(letters.values()), section)
    figures.add("started business applications per approved execution", "1", section)
    figures.add("all started s after recovery", after_recovery, section)
    assert after_recovery < bound, f"{after_recovery:.1f} s after recovery (bound {bound} s)"


def test_kompliant_outage_four_budgets_long_ends_with_one_application(tmp_path: Path, figures: Any) -> None:
    """CI-sized: budget 2 s, outage 8 s (longer than the six attempts of the old fixed count, about 1 s
    apart at RQ's whole-second scheduling); sweep every 1 s (the default 60 s scaled down)."""
    _outage_past_budget(
        tmp_path, figures, budget=2.0, outage=8.0, scenarios=["approved", "approved", "rejected"], bound=5.0
    )


@pytest.mark.slow
def test_kompliant_outage_four_budgets_long_many_applications(tmp_path: Path, figures: Any) -> None:
    """The issue's size: budget 3 s, outage 12 s of 503 without Retry-After, ten applications."""
    _outage_past_budget(
        tmp_path, figures, budget=3.0, outage=12.0, scenarios=["approved"] * 8 + ["rejected"] * 2, bound=5.0
    )
