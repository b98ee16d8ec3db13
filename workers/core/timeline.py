"""One application's events in order, with the time between steps.

The publisher appends every event envelope (JSON) to ``keys.timeline(execution_id)``. This module turns
that list into what people read: shared by ``GET /v1/applications/{id}/timeline`` (receiver) and
``workfloo-bridge timeline ID`` (CLI), so both show the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
import redis

from workers.core import keys

MAX_TIMELINE_EVENTS = 1000
"""Read at most this many events of one application (a runaway timeline must not stall the caller)."""


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def build_timeline(execution_id: str, raw_events: Iterable[bytes | str]) -> dict[str, Any]:
    """Decode envelopes and add ``since_previous_ms`` / ``since_start_ms`` to each one.

    Events are sorted by ``occurred_at`` (stable, so publish order breaks ties); an envelope that is not
    valid JSON is kept as ``{"type": "invalid", "raw": ...}`` rather than hiding the rest.
    """
    events: list[dict[str, Any]] = []
    for raw in raw_events:
        try:
            decoded = orjson.loads(raw)
            if not isinstance(decoded, dict):
                raise ValueError("not an object")
            events.append(decoded)
        except (orjson.JSONDecodeError, ValueError):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            events.append({"type": "invalid", "raw": text[:200]})
    times = [_parse_time(event.get("occurred_at")) for event in events]
    order = sorted(range(len(events)), key=lambda i: (times[i] is None, times[i] or datetime.min, i))
    first: datetime | None = None
    previous: datetime | None = None
    steps: list[dict[str, Any]] = []
    for i in order:
        event, at = events[i], times[i]
        step = dict(event)
        if at is not None:
            first = first or at
            step["since_start_ms"] = round((at - first).total_seconds() * 1000, 1)
            step["since_previous_ms"] = (
                round((at - previous).total_seconds() * 1000, 1) if previous is not None else 0.0
            )
            previous = at
        else:
            step["since_start_ms"] = None
            step["since_previous_ms"] = None
        steps.append(step)
    total = steps[-1]["since_start_ms"] if steps and steps[-1]["since_start_ms"] is not None else 0.0
    return {"execution_id": execution_id, "count": len(steps), "duration_ms": total, "events": steps}


def read_timeline(client: redis.Redis, execution_id: str) -> dict[str, Any]:
    """Read and build one application's timeline with a synchronous Redis client."""
    raw: list[bytes] = client.lrange(keys.timeline(execution_id), 0, MAX_TIMELINE_EVENTS - 1)  # type: ignore[assignment]
    return build_timeline(execution_id, raw)
