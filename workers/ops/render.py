"""Rich renderings for people, shared by the CLI and the demo; the data behind them comes from elsewhere.

Kept apart from the commands so that output is decided in one place and the demo can show the same
timeline table as ``workfloo-bridge timeline``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from workers.fanout.dead_events import DeadEvent
    from workers.ops.checks import CheckResult
    from workers.runtime.dead_letters import DeadLetter


def event_detail(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    if not isinstance(data, dict):
        return ""
    parts = []
    keys = ("status", "decision", "outcome", "phase", "node_type", "why", "resend", "reason", "workflow_id")
    for key in keys:
        value = data.get(key)
        if value not in (None, "", [], {}):
            parts.append(f"{key}={value}")
    return " ".join(parts)[:70]


def timeline_table(
    execution_id: str,
    events: Sequence[dict[str, Any]],
    title: str | None = None,
    caption: str | None = None,
) -> Table:
    """Events of one application in order with the time since the previous step and since the start."""
    table = Table(title=title or f"timeline {execution_id}", title_justify="left", caption=caption)
    table.add_column("+prev", justify="right")
    table.add_column("t", justify="right")
    table.add_column("event", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for event in events:
        prev = event.get("since_previous_ms")
        start = event.get("since_start_ms")
        table.add_row(
            "" if prev is None else f"{prev:.0f} ms",
            "" if start is None else f"{start:.0f} ms",
            str(event.get("type", "?")),
            event_detail(event),
        )
    return table


def event_line(entry_id: str, fields: dict[bytes, bytes]) -> str:
    """One stream entry as one human-readable line: time, type, execution id, short data."""
    try:
        envelope: dict[str, Any] = orjson.loads(fields.get(b"event", b"{}"))
    except orjson.JSONDecodeError:
        return f"{entry_id}  (unparseable entry)"
    when = str(envelope.get("occurred_at") or entry_id)
    data = envelope.get("data") or {}
    short = " ".join(f"{k}={_short(v)}" for k, v in data.items()) if isinstance(data, dict) else _short(data)
    if len(short) > 100:
        short = short[:99] + "…"
    execution = envelope.get("execution_id") or "-"
    return f"{when}  {envelope.get('type', '?'):<28} {execution:<24}  {short}".rstrip()


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value if " " not in value else orjson.dumps(value).decode()
    return orjson.dumps(value).decode()


def print_status(console: Console, status: dict[str, Any]) -> None:
    """``collect_status``'s document as tables: queues, workers, stream, consumer groups, recent events."""
    queues = Table(title="queues", title_justify="left")
    for column in ("queue", "queued", "started", "failed", "scheduled", "deferred", "finished"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in status["queues"]:
        queues.add_row(
            q["name"],
            *(
                str(q[c]) if c != "failed" or not q[c] else f"[red]{q[c]}[/red]"
                for c in ("queued", "started", "failed", "scheduled", "deferred", "finished")
            ),
        )
    console.print(queues)
    states: dict[str, int] = {}
    for worker in status["workers"]:
        states[worker["state"]] = states.get(worker["state"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    console.print(f"workers: {len(status['workers'])} ({summary})")
    stream = status["stream"]
    console.print(
        f"event stream {stream['key']}: {stream['length']} entries, "
        f"dead letters: {stream['dead_letter_length']}, open executions: {status['open_executions']}, "
        f"hand-offs pending: {status.get('followup_pending', 0)}"
    )
    if status["consumer_groups"]:
        groups = Table(title="consumer groups", title_justify="left")
        for column in ("group", "consumers", "pending", "lag", "last delivered", "lost to trimming"):
            groups.add_column(column)
        for g in status["consumer_groups"]:
            groups.add_row(
                g["name"],
                str(g["consumers"]),
                str(g["pending"]),
                str(g["lag"]),
                g["last_delivered_id"],
                str(g.get("trimmed_unacked", 0)),
            )
        console.print(groups)
    else:
        console.print("consumer groups: none")
    if status["recent_events"]:
        recent = Table(title="recent events (newest first)", title_justify="left")
        for column in ("stream id", "type", "execution", "occurred at"):
            recent.add_column(column)
        for e in status["recent_events"]:
            recent.add_row(
                e["id"], str(e["type"]), str(e["execution_id"] or "-"), str(e["occurred_at"] or "")
            )
        console.print(recent)


def print_checks(console: Console, results: Sequence[CheckResult]) -> None:
    """One line per check, then the verdict."""
    for r in results:
        mark = "[green]ok  [/green]" if r.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {r.name:<10} {r.message}")
    ok = all(r.ok for r in results)
    console.print("all checks passed" if ok else "[red]some checks failed[/red]")


def dead_letters_table(letters: Sequence[DeadLetter]) -> Table:
    table = Table("job id", "function", "failed at", "reason", "execution id", "replays")
    for letter in letters:
        table.add_row(
            letter.job_id,
            letter.function or "",
            letter.failed_at or "",
            letter.reason,
            letter.execution_id or "",
            str(letter.replays),
        )
    return table


def dead_events_table(entries: Sequence[DeadEvent]) -> Table:
    table = Table("entry id", "group", "reason", "deliveries", "type", "execution id", "original id")
    for entry in entries:
        table.add_row(
            entry.entry_id,
            entry.group or "",
            entry.reason or "",
            "" if entry.deliveries is None else str(entry.deliveries),
            entry.type or "",
            entry.execution_id or "",
            entry.original_id or "",
        )
    return table


def subscribers_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table("key", "url", "types", "state", "delivered", "failed", "last attempt", "last status")
    for row in rows:
        disabled = row["disabled"]
        table.add_row(
            row["key"],
            row["url"],
            ",".join(row["types"]),
            f"disabled ({disabled.get('reason', '?')})" if disabled else "enabled",
            str(row["delivered"]),
            str(row["failed_attempts"]),
            row["last_attempt_at"] or "",
            row["last_status"] or "",
        )
    return table
