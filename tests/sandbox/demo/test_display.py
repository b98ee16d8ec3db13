"""The demo's judgement of outcomes, its summary figures and what it prints."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from workers.sandbox.demo.display import print_report, progress_table, summary_panel
from workers.sandbox.demo.model import AppRun, Summary, scenarios_for
from workers.sandbox.demo.scenario import judge


def _events(*types: str, **data: Any) -> list[dict[str, Any]]:
    return [{"type": t, "data": data if t.startswith("workfloo.") else {}} for t in types]


def _render(renderable: Any) -> str:
    console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_scenarios_cycle() -> None:
    assert scenarios_for(6) == [
        "approved",
        "rejected",
        "nip-error",
        "duplicate-storm",
        "approved",
        "rejected",
    ]
    assert scenarios_for(0) == []


def test_judge_approved_needs_the_kompliant_handoff() -> None:
    run = AppRun(1, "approved")
    run.events = _events("nip.delivered", "workfloo.completed", "kompliant.workflow.created")
    assert judge(run)[0] != "approved"
    run.events += _events("kompliant.workflow.started")
    assert judge(run) == ("approved", [])


def test_judge_rejected_and_forbidden_handoff() -> None:
    run = AppRun(2, "rejected")
    run.events = _events("workfloo.completed", decision="rejected")
    assert judge(run) == ("rejected", [])
    run.events += _events("kompliant.workflow.created")
    _, problems = judge(run)
    assert problems == ["a rejected application was handed to Kompliant"]


def test_judge_nip_error_requires_failure_and_resend() -> None:
    run = AppRun(3, "nip-error")
    run.events = _events("nip.delivered", "workfloo.completed", "kompliant.workflow.started")
    outcome, problems = judge(run)
    assert outcome == "approved"
    assert "the NIP was not resent" in problems


def test_judge_flags_double_effects_and_accepted_storm_copies() -> None:
    run = AppRun(4, "duplicate-storm")
    run.events = _events("workfloo.completed", "kompliant.workflow.started", "kompliant.workflow.started")
    run.storm_sent, run.storm_accepted, run.storm_duplicates = 10, 2, 7
    _, problems = judge(run)
    assert "kompliant.workflow.started published 2 times (expected once)" in problems
    assert "1 storm copies were not acknowledged with 200" in problems
    assert "2 storm copies were accepted as new (at most 1 expected)" in problems


def test_summary_ok_only_when_every_application_is_as_expected() -> None:
    good, bad = AppRun(1, "approved"), AppRun(2, "rejected")
    good.finish("approved")
    bad.finish("approved")
    assert Summary(runs=[good]).ok
    summary = Summary(runs=[good, bad], events_published=12, duplicates_absorbed=39)
    assert not summary.ok
    text = _render(summary_panel(summary))
    assert "demo FAILED" in text
    assert "1/2 as expected" in text
    assert "#2 rejected: outcome approved, expected rejected" in text
    assert "duplicates absorbed" in text and "39" in text
    assert summary.as_dict()["applications"][1]["ok"] is False
    assert not Summary(runs=[]).ok


def test_report_prints_timelines_and_summary() -> None:
    run = AppRun(1, "approved", execution_id="657118e1d511b6e54fe2a969")
    run.events = [
        {"type": "nip.sent", "source": "kiban", "since_previous_ms": 0.0, "since_start_ms": 0.0},
        {
            "type": "workfloo.completed",
            "source": "kiban",
            "since_previous_ms": 812.0,
            "since_start_ms": 812.0,
            "data": {"status": "SUCCESS", "decision": "approved"},
        },
    ]
    run.finish("approved")
    console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_report(console, Summary(runs=[run], events_published=2))
    text = console.export_text()
    assert "#1 approved · 657118e1d511b6e54fe2a969" in text
    assert "812 ms" in text and "decision=approved" in text
    assert "demo passed" in text
    assert "✔ approved" in _render(progress_table([run]))


def test_compact_timeline_hides_receipts_and_repeats_and_recomputes_steps() -> None:
    from workers.sandbox.demo.display import compact_events

    def ev(kind: str, at: float, **data: Any) -> dict[str, Any]:
        return {"type": kind, "since_start_ms": at, "since_previous_ms": 1.0, "data": data}

    events = [
        ev("application.started", 0),
        ev("callback.received", 5),
        ev("workfloo.status_changed", 6, status="PROGRESS", node_type="LINK"),
        ev("callback.received", 50),
        ev("workfloo.status_changed", 51, status="PROGRESS", node_type="LINK"),
        ev("nip.sent", 80),
        ev("workfloo.status_changed", 90, status="PROGRESS", node_type="LINK"),
        ev("workfloo.status_changed", 400, status="SUCCESS"),
    ]
    rows, hidden = compact_events(events)
    assert [r["type"] for r in rows] == [
        "application.started",
        "workfloo.status_changed",
        "nip.sent",
        "workfloo.status_changed",
    ]
    assert hidden == 4
    assert [r["since_previous_ms"] for r in rows] == [0.0, 6.0, 74.0, 320.0]
