"""Rich renderings shared by the CLI and the demo: one application's timeline as a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table


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
