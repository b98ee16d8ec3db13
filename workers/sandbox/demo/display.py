"""What the demo shows: a live table while it runs, then each application's timeline and a summary.

Everything goes through one ``rich.console.Console`` so tests can capture it; on a non-terminal the live
table is not redrawn (rich prints it once at the end), so CI logs stay short.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from workers.ops.render import event_detail, timeline_table
from workers.sandbox.demo.model import AppRun, Summary

_STAGE_STYLE = {"done": "green", "error": "red"}


def _short(execution_id: str | None) -> str:
    if not execution_id:
        return "-"
    return execution_id if len(execution_id) <= 12 else f"{execution_id[:6]}…{execution_id[-4:]}"


def _result(run: AppRun) -> Text:
    if not run.done:
        return Text("…", style="dim")
    if run.ok:
        return Text(f"✔ {run.outcome}", style="bold green")
    got = run.outcome or "no outcome"
    return Text(f"✘ {got} (expected {run.expected})", style="bold red")


def progress_table(runs: Sequence[AppRun], title: str = "applications") -> Table:
    """One row per application: scenario, execution id, current stage, events so far, elapsed time."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("#", justify="right")
    table.add_column("scenario")
    table.add_column("execution")
    table.add_column("stage")
    table.add_column("events", justify="right")
    table.add_column("elapsed", justify="right")
    table.add_column("result")
    for run in runs:
        table.add_row(
            str(run.index),
            run.scenario,
            _short(run.execution_id),
            Text(run.stage, style=_STAGE_STYLE.get(run.stage, "cyan")),
            str(len(run.events)),
            f"{run.elapsed:5.1f}s",
            _result(run),
        )
    return table


class LiveProgress:
    """``with LiveProgress(console, runs) as live: ... live.refresh()`` redraws the table."""

    def __init__(self, console: Console, runs: Sequence[AppRun]) -> None:
        self.runs = runs
        self._live = Live(
            progress_table(runs), console=console, refresh_per_second=8, transient=False, auto_refresh=False
        )

    def refresh(self) -> None:
        self._live.update(progress_table(self.runs), refresh=True)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.update(progress_table(self.runs))
        self._live.__exit__(exc_type, exc, tb)


NOISE_TYPES = frozenset({"callback.received"})


def compact_events(events: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The steps a person reads: no raw receipts (``callback.received``), no repeated status change with
    the same detail; ``since_previous_ms`` recomputed between the rows kept. Returns (rows, hidden)."""
    kept: list[dict[str, Any]] = []
    last_start: float | None = None
    last_status: str | None = None
    for event in events:
        kind = str(event.get("type"))
        if kind in NOISE_TYPES:
            continue
        if kind == "workfloo.status_changed":
            detail = event_detail(event)
            if detail == last_status:
                continue
            last_status = detail
        row = dict(event)
        start = event.get("since_start_ms")
        if isinstance(start, int | float):
            row["since_previous_ms"] = 0.0 if last_start is None else round(start - last_start, 1)
            last_start = start
        kept.append(row)
    return kept, len(events) - len(kept)


def summary_panel(summary: Summary) -> Panel:
    ok = sum(1 for run in summary.runs if run.ok)
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    lines.add_row("outcomes", f"{ok}/{len(summary.runs)} as expected")
    by_outcome: dict[str, int] = {}
    for run in summary.runs:
        by_outcome[run.outcome or "none"] = by_outcome.get(run.outcome or "none", 0) + 1
    lines.add_row("", ", ".join(f"{k}: {v}" for k, v in sorted(by_outcome.items())))
    lines.add_row("events published", str(summary.events_published))
    lines.add_row("duplicates absorbed", str(summary.duplicates_absorbed))
    p50, worst = summary.percentile(0.5), summary.percentile(1.0)
    if p50 is not None and worst is not None:
        lines.add_row("end-to-end latency", f"p50 {p50:.2f} s, max {worst:.2f} s")
    lines.add_row("wall time", f"{summary.wall_seconds:.1f} s")
    if summary.log_dir:
        lines.add_row("process logs", summary.log_dir)
    failures = [run for run in summary.runs if not run.ok]
    body: list[Any] = [lines]
    for run in failures:
        reasons = [run.error] if run.error else []
        if run.outcome != run.expected:
            reasons.append(f"outcome {run.outcome or 'none'}, expected {run.expected}")
        reasons.extend(run.checks)
        body.append(Text(f"#{run.index} {run.scenario}: " + "; ".join(r for r in reasons if r), style="red"))
    style = "green" if summary.ok else "red"
    title = "demo passed" if summary.ok else "demo FAILED"
    return Panel(Group(*body), title=title, border_style=style, expand=False)


def print_report(console: Console, summary: Summary, *, timelines: bool = True) -> None:
    """Final output: the progress table, each application's timeline, the summary panel."""
    if timelines:
        for run in summary.runs:
            if run.execution_id and run.events:
                rows, hidden = compact_events(run.events)
                caption = (
                    f"{hidden} receipts and repeated status changes hidden: "
                    f"workfloo-bridge timeline {run.execution_id}"
                    if hidden
                    else None
                )
                title = f"#{run.index} {run.scenario} · {run.execution_id}"
                console.print(timeline_table(run.execution_id, rows, title=title, caption=caption))
    console.print(summary_panel(summary))
