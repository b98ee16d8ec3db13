"""What the demo tracks about each application it drives, and the run's summary figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SCENARIOS: tuple[str, ...] = ("approved", "rejected", "nip-error", "duplicate-storm")
"""The demo's scenarios, in order; ``--applications N`` cycles through them."""

EXPECTED_OUTCOME: dict[str, str] = {
    "approved": "approved",
    "rejected": "rejected",
    "nip-error": "approved",
    "duplicate-storm": "approved",
}
"""``approved`` = workfloo completed, decision approved and handed to Kompliant (workflow started);
``rejected`` = workfloo ended with a rejecting decision and no Kompliant workflow."""

KIBAN_SCENARIO: dict[str, str] = {
    "approved": "approved",
    "rejected": "rejected",
    "nip-error": "nip-error",
    "duplicate-storm": "approved",
}
"""Sandbox ``scenarioId`` of the fake Kiban for each demo scenario."""


def scenarios_for(count: int) -> list[str]:
    return [SCENARIOS[i % len(SCENARIOS)] for i in range(count)]


@dataclass
class AppRun:
    """One application driven by the demo, updated as it moves through the flow."""

    index: int
    scenario: str
    execution_id: str | None = None
    stage: str = "queued"
    outcome: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    """Scenario-specific expectations that failed, in plain words (empty = all held)."""
    storm_sent: int = 0
    storm_accepted: int = 0
    storm_duplicates: int = 0

    @property
    def expected(self) -> str:
        return EXPECTED_OUTCOME[self.scenario]

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def ok(self) -> bool:
        return self.done and self.error is None and self.outcome == self.expected and not self.checks

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at

    def event_types(self) -> list[str]:
        return [str(event.get("type")) for event in self.events]

    def count(self, event_type: str) -> int:
        return sum(1 for t in self.event_types() if t == event_type)

    def finish(self, outcome: str | None, error: str | None = None) -> None:
        self.outcome = outcome
        self.error = error
        self.finished_at = time.monotonic()
        self.stage = "done" if error is None else "error"


@dataclass
class Summary:
    """Figures for the whole run."""

    runs: list[AppRun]
    events_published: int = 0
    duplicates_absorbed: int = 0
    wall_seconds: float = 0.0
    log_dir: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(run.ok for run in self.runs)

    def latencies(self) -> list[float]:
        return sorted(run.elapsed for run in self.runs if run.done)

    def percentile(self, fraction: float) -> float | None:
        values = self.latencies()
        if not values:
            return None
        index = min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))
        return values[index]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "applications": [
                {
                    "index": run.index,
                    "scenario": run.scenario,
                    "execution_id": run.execution_id,
                    "expected": run.expected,
                    "outcome": run.outcome,
                    "ok": run.ok,
                    "error": run.error,
                    "failed_checks": run.checks,
                    "latency_seconds": round(run.elapsed, 3),
                    "events": run.event_types(),
                    "storm": {
                        "sent": run.storm_sent,
                        "accepted": run.storm_accepted,
                        "duplicates": run.storm_duplicates,
                    }
                    if run.storm_sent
                    else None,
                }
                for run in self.runs
            ],
            "events_published": self.events_published,
            "duplicates_absorbed": self.duplicates_absorbed,
            "latency_seconds": {
                "p50": _round(self.percentile(0.5)),
                "max": _round(self.percentile(1.0)),
            },
            "wall_seconds": round(self.wall_seconds, 3),
            "log_dir": self.log_dir,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
