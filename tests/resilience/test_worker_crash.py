"""Worker crash: SIGKILL workers again and again while applications flow; afterwards every acknowledged
callback was processed, every approved execution has exactly one Kompliant business application, the
event stream holds no duplicated effect, and each killed worker's job ran to the end elsewhere (the
recovery time per kill is recorded)."""

from __future__ import annotations

import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry

from tests.support.resilience_stack import ONCE_PER_EXECUTION, Bridge, bridge_stack
from workers.core.contract import JOB_SERIALIZER
from workers.sandbox.supervisor import Child
from workers.sandbox.wait import holds_within, wait_until

SCENARIOS = ["approved"] * 7 + ["rejected"] * 2 + ["abandoned"]


class Killer(threading.Thread):
    """Kills a worker (a busy one when there is one), starts a replacement, and waits until the job
    the dead worker was running has run to its end (or asked for a retry) on another worker."""

    def __init__(
        self, bridge: Bridge, pool: dict[str, Child], kills: int, gap: float, schedulers: bool
    ) -> None:
        super().__init__(daemon=True)
        self.bridge, self.pool, self.kills, self.gap, self.schedulers = bridge, pool, kills, gap, schedulers
        self.recoveries: list[float] = []
        self.idle_kills = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(9)
        for n in range(self.kills):
            if self.stop.wait(self.gap):
                return
            busy: list[tuple[str, str]] = []

            def found(busy: list[tuple[str, str]] = busy) -> bool:  # prefer a worker running a job now
                busy[:] = [(name, job) for name in self.pool if (job := self.bridge.current_job(name))]
                return bool(busy) or self.stop.is_set()

            holds_within(found, 10)
            name, job_id = rng.choice(busy) if busy else (rng.choice(sorted(self.pool)), None)
            self.bridge.kill(self.pool.pop(name))
            killed_at = time.monotonic()
            replacement = f"w{n}-r"
            self.pool[replacement] = self.bridge.start_worker(replacement, scheduler=self.schedulers)
            if job_id is None:
                self.idle_kills += 1
                continue
            try:
                wait_until(
                    lambda j=job_id: self._recovered(j),
                    timeout=90,
                    what=f"job {job_id} killed with its worker",
                    interval=0.05,
                )
            except AssertionError as exc:
                self.errors.append(f"{exc}; {self._describe(job_id)}")
                return
            self.recoveries.append(time.monotonic() - killed_at)

    def _describe(self, job_id: str) -> str:
        from rq.registry import StartedJobRegistry

        job = Job.fetch(job_id, connection=self.bridge.redis, serializer=JOB_SERIALIZER)
        started = StartedJobRegistry(
            self.bridge.settings.bridge_queue, connection=self.bridge.redis, serializer=JOB_SERIALIZER
        )
        return (
            f"status={job.get_status()} meta={job.meta} retries={job.number_of_retries} "
            f"started_registry={started.get_job_and_execution_ids(cleanup=False)} "
            f"queue={self.bridge.redis.lrange('rq:queue:workfloo', 0, 5)}"
        )

    def _recovered(self, job_id: str) -> bool:
        try:
            job = Job.fetch(job_id, connection=self.bridge.redis, serializer=JOB_SERIALIZER)
        except Exception:
            return True  # gone: finished and its result expired (or deleted by RQ)
        status = job.get_status()
        return getattr(status, "value", status) in {"finished", "scheduled", "failed"}


def _crash_run(tmp_path: Path, figures: Any, *, applications: int, kills: int, kill_schedulers: bool) -> None:
    section = "worker crash"
    with bridge_stack(tmp_path) as bridge:
        # Slow vendors so that jobs are on the wire when the kills land.
        bridge.faults("kiban", latency_ms=40)
        bridge.faults("kompliant", latency_ms=120)
        if not kill_schedulers:
            bridge.start_worker("scheduler-worker", scheduler=True)
        pool = {f"w-{i}": bridge.start_worker(f"w-{i}", scheduler=kill_schedulers) for i in range(2)}
        killer = Killer(bridge, pool, kills, gap=1.0, schedulers=kill_schedulers)
        scenarios = [SCENARIOS[i % len(SCENARIOS)] for i in range(applications)]
        killer.start()
        executions = bridge.start_applications(scenarios, timeout=180)
        bridge.validate_all(executions, timeout=180)
        killer.join(timeout=kills * 95)
        assert not killer.errors, killer.errors
        assert not killer.is_alive(), "the kill loop did not finish"
        bridge.reset_faults()
        bridge.wait_done(executions, 240, "every application to finish after the kills")

        # Every acknowledged callback (a dedupe key) was processed (its callback.received was published).
        acked = bridge.wait_callbacks_processed(60)
        failed = FailedJobRegistry(
            bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER
        ).get_job_ids()
        assert not failed, f"dead letters after the kills: {failed}"

        # Exactly one business application per approved execution, none for the others.
        counts = bridge.applications_by_referrer()
        for execution_id in executions:
            expected = 1 if bridge.scenario_of[execution_id] == "approved" else 0
            assert counts.get(execution_id, 0) == expected, (execution_id, bridge.scenario_of[execution_id])

        # No effect published twice.
        effects = [(t, e) for t, e, _ in bridge.stream() if t in ONCE_PER_EXECUTION]
        duplicated = {x for x in effects if effects.count(x) > 1}
        assert not duplicated, f"duplicated effect events: {sorted(duplicated)[:5]}"

    recoveries = killer.recoveries
    figures.add("applications", applications, section)
    figures.add("approved (one business application each)", scenarios.count("approved"), section)
    figures.add("acknowledged callbacks processed", acked, section)
    figures.add("SIGKILLs survived", kills, section)
    figures.add("kills mid-job / idle worker", f"{len(recoveries)} / {killer.idle_kills}", section)
    figures.add("schedulers killed too", kill_schedulers, section)
    if recoveries:
        figures.add("recovery s min/median/max",
                    f"{min(recoveries):.2f} / {statistics.median(recoveries):.2f} / {max(recoveries):.2f}",
                    section)  # fmt: skip
        figures.add("recovery s per kill", " ".join(f"{r:.2f}" for r in recoveries), section)
    assert recoveries, "no kill landed while a job was running: nothing was recovered"


def test_worker_sigkills_ci(tmp_path: Path, figures: Any) -> None:
    _crash_run(tmp_path, figures, applications=30, kills=3, kill_schedulers=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_worker_sigkills_20(tmp_path: Path, figures: Any) -> None:
    _crash_run(tmp_path, figures, applications=300, kills=20, kill_schedulers=True)
