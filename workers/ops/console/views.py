"""What the console's pages show, read from Redis with a synchronous client (run in a thread).

Nothing here shows more than the events carry: applications are listed from the event stream and the
timelines, dead-letter reasons are redacted, subscribers show their key and delivery counters (never
their URL's credentials or secret).
"""

from __future__ import annotations

import re
from typing import Any

import redis

from workers.core import keys
from workers.core.events import EventType
from workers.core.settings import Settings
from workers.core.timeline import read_timeline
from workers.fanout import dead_events, webhooks
from workers.jobs import api as commands_api
from workers.ops.status import collect_status
from workers.runtime import dead_letters

RECENT_SCAN = 500
"""Stream entries read (newest first) to list recent applications."""

DEAD_EVENTS_SHOWN = 200
"""Most recent entries of the consumers' dead-letter stream the console lists."""

STATES = ("open", "handed off", "completed", "failed", "forgotten")
"""What the applications page filters by, derived from an application's latest event type."""

_STATE_OF: dict[str, str] = {
    EventType.WORKFLOO_COMPLETED: "completed",
    EventType.KOMPLIANT_WORKFLOW_CREATED: "handed off",
    EventType.KOMPLIANT_WORKFLOW_STARTED: "handed off",
    EventType.WORKFLOO_FAILED: "failed",
    EventType.WORKFLOO_ABANDONED: "failed",
    EventType.NIP_FAILED: "failed",
    EventType.ACTION_FAILED: "failed",
    EventType.JOB_DEAD_LETTERED: "failed",
    EventType.KOMPLIANT_WORKFLOW_REJECTED: "failed",
    EventType.KOMPLIANT_WORKFLOW_CONFLICT: "failed",
    EventType.APPLICATION_FORGOTTEN: "forgotten",
}


def state_of(event_type: str) -> str:
    """The state an application's latest event type puts it in (anything not listed: open)."""
    return _STATE_OF.get(event_type, "open")


_REDACTIONS = [
    re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"),  # e-mail
    re.compile(r"\b[A-Z&Ñ]{3,4}\d{6}[A-Z0-9]{2,8}\b", re.IGNORECASE),  # RFC / CURP
    re.compile(r"\+?\d[\d -]{6,}\d"),  # phone numbers, long digit runs
]


def redact(reason: str) -> str:
    """A dead letter's reason with anything shaped like applicant data masked (the bridge's own reasons
    are codes; an unexpected exception's text may not be)."""
    for pattern in _REDACTIONS:
        reason = pattern.sub("[redacted]", reason)
    return reason[:300]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def overview(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    status = collect_status(client, settings, recent=1)
    status["dead_letters"] = len(dead_letters.registry(client, settings.bridge_queue).get_job_ids())
    status["subscribers"] = subscribers(client, settings)
    return status


def recent_applications(client: redis.Redis, settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """Executions seen in the newest stream entries, newest first, with their latest event type (an
    operator's action aside) and the state it puts them in."""
    seen: dict[str, dict[str, Any]] = {}
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(  # type: ignore[assignment]
        settings.events_stream, count=RECENT_SCAN
    )
    for entry_id, fields in entries:
        execution_id = _text(fields.get(b"execution_id", b""))
        event_type = _text(fields.get(b"type", b""))
        if not execution_id or execution_id in seen or event_type == EventType.OPERATOR_ACTION:
            continue
        seen[execution_id] = {
            "execution_id": execution_id,
            "last_event": event_type,
            "state": state_of(event_type),
            "entry_id": _text(entry_id),
        }
        if len(seen) >= limit:
            break
    return list(seen.values())


def find_application(client: redis.Redis, query: str) -> str | None:
    """The execution id a search names: an execution id with a timeline, or a command id whose result
    carries one."""
    query = query.strip()
    if not query:
        return None
    if client.exists(keys.timeline(query)):
        return query
    result = commands_api.command_result(client, query)
    if result and isinstance(result.get("result"), dict) and result["result"].get("execution_id"):
        return str(result["result"]["execution_id"])
    return None


def application(client: redis.Redis, settings: Settings, execution_id: str) -> dict[str, Any]:
    """One application: its timeline, the Kompliant ids its events carry, its state (its latest event
    type, operators' actions aside) and its dead letters."""
    timeline = read_timeline(client, execution_id)
    kompliant: dict[str, str] = {}
    for event in timeline["events"]:
        if str(event.get("type", "")).startswith("kompliant."):
            for name, value in (event.get("data") or {}).items():
                if name.endswith("_id") and isinstance(value, str) and value:
                    kompliant[name] = value
    letters = [
        letter
        for letter in dead_letters.list_dead_letters(client, settings.bridge_queue)
        if letter.execution_id == execution_id
    ]
    own = [e["type"] for e in timeline["events"] if e.get("type") != EventType.OPERATOR_ACTION]
    state = own[-1] if own else None
    return {
        "execution_id": execution_id,
        "timeline": timeline,
        "kompliant": kompliant,
        "state": state,
        "dead_letters": [dict(letter.as_dict(), reason=redact(letter.reason)) for letter in letters],
    }


def dead_letter_list(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    return [
        dict(letter.as_dict(), reason=redact(letter.reason))
        for letter in dead_letters.list_dead_letters(client, settings.bridge_queue)
    ]


def subscribers(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every configured HTTP subscriber: key, event types, counters, last outcome, disabled reason."""
    found = []
    for subscriber in settings.bridge_http_subscribers:
        state = {_text(k): _text(v) for k, v in client.hgetall(keys.subscriber_state(subscriber.key)).items()}
        found.append(
            {
                "key": subscriber.key,
                "types": ", ".join(subscriber.types),
                "delivered": int(state.get("delivered", 0)),
                "failed_attempts": int(state.get("failed_attempts", 0)),
                "gave_up": int(state.get("gave_up", 0)),
                "last_status": state.get("last_status", ""),
                "last_result": state.get("last_result", ""),
                "last_attempt_at": state.get("last_attempt_at", ""),
                "disabled": webhooks.disabled_reason(client, subscriber.key),
            }
        )
    return found


def dead_event_list(client: redis.Redis) -> list[dict[str, Any]]:
    """The consumers' dead-letter stream, newest first: what ``events dead list`` shows (never the
    event itself)."""
    entries = dead_events.list_dead_events(client, count=DEAD_EVENTS_SHOWN)
    return [
        {
            "entry_id": e.entry_id,
            "group": e.group or "",
            "reason": redact(e.reason or ""),
            "deliveries": e.deliveries if e.deliveries is not None else "",
            "type": e.type or "",
            "execution_id": e.execution_id or "",
            "replayable": e.replayable,
        }
        for e in reversed(entries)
    ]
