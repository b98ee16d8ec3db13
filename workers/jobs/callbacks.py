"""Jobs for Kiban callbacks (enqueued by the receiver; argument = ``workers.core.contract.CallbackPayload``).

Each job first publishes ``callback.received`` (``once_key`` = the delivery's ``event_id``), then the
specific events, then the next action. Kiban may repeat, reorder or drop callbacks, so every effect is
keyed: events by ``once_key``, NIP resends by the ERROR event they answer, the finish path by the
execution (``finished:<id>``) and the Kompliant hand-off by its anchors (``workers.jobs.handoff``).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import redis
from rq import Queue, get_current_job

from workers.core import keys, tracing
from workers.core.contract import (
    JOB_SERIALIZER,
    RESEND_FUNCTION,
    CallbackPayload,
    ResendNipCommand,
    abandoned_job_retry,
)
from workers.core.errors import KibanNotFoundError, TransientError
from workers.core.events import Event, EventType, Source
from workers.core.log import get_logger, redactor
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import connection, settings, state
from workers.jobs.handoff import Handoff
from workers.jobs.outcome import TERMINAL_STATUSES, as_mapping, normalise
from workers.jobs.retry import guarded
from workers.vendors.kiban.client import get_kiban_client
from workers.vendors.kompliant.client import get_kompliant_client

log = get_logger(__name__)

NIP_EVENT_TYPES = {
    "PENDING": EventType.NIP_PENDING,
    "SENT": EventType.NIP_SENT,
    "SUCCESS": EventType.NIP_DELIVERED,
    "ERROR": EventType.NIP_FAILED,
}

FINISH_FUNCTION = "workers.jobs.callbacks.finish_execution"


class FinishCommand(TypedDict):
    """Argument of ``FINISH_FUNCTION`` (enqueued by the reconciler)."""

    execution_id: str
    trigger: str


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _received(
    publisher: Publisher, payload: CallbackPayload, execution_id: str | None, detail: str | None
) -> None:
    data: dict[str, Any] = {
        "kind": payload["kind"],
        "event_id": payload["event_id"],
        "received_at": payload["received_at"],
        "event_type": payload["event_type_header"],
        "detail": detail,
    }
    if payload["link_id"]:
        data["link_id"] = payload["link_id"]
    publisher.publish(
        Event(type=EventType.CALLBACK_RECEIVED, execution_id=execution_id, source=Source.KIBAN, data=data),
        once_key=payload["event_id"],
    )


def job_options(settings_: Settings) -> dict[str, Any]:
    """RQ options of every job the workers enqueue on the bridge queue (as the receiver's template)."""
    return {
        "job_timeout": settings_.job_timeout_seconds,
        "result_ttl": settings_.job_result_ttl_seconds,
        "failure_ttl": settings_.job_failure_ttl_seconds,
        "retry": abandoned_job_retry(settings_),
    }


# --- NIP delivery events ------------------------------------------------------------------------


def destination_invalid(message: str | None, patterns: list[str]) -> bool:
    if not message:
        return False
    return any(re.search(pattern, message, re.IGNORECASE) for pattern in patterns)


def handle_nip_event(payload: CallbackPayload) -> Any:
    conn, s = connection(), settings()
    execution_id = payload["execution_id"]
    link_id = payload["link_id"] or payload["body"].get("linkId")
    if not execution_id and link_id:
        execution_id = state.resolve_link(conn, str(link_id))
    return guarded(conn, s, "nip_event", execution_id, lambda: _nip_event(conn, s, payload, execution_id))


def _nip_event(
    conn: redis.Redis, s: Settings, payload: CallbackPayload, execution_id: str | None
) -> dict[str, Any]:
    publisher = Publisher(conn, s)
    body = payload["body"]
    event = str(body.get("event") or "").upper()
    _received(publisher, payload, execution_id, event or None)
    if not execution_id:
        log.warning("nip_event_unattributed", event_id=payload["event_id"])
        return {"execution_id": None, "event": event}
    link_id = payload["link_id"] or body.get("linkId")
    if link_id:
        state.map_link(conn, str(link_id), execution_id)
    state.touch_open(conn, execution_id)
    date = str(body.get("date") or payload["event_id"])
    return apply_nip_event(
        conn, s, publisher, execution_id, event, date, body.get("errorMessage"), link_id, Source.KIBAN
    )


def apply_nip_event(
    conn: redis.Redis,
    s: Settings,
    publisher: Publisher,
    execution_id: str,
    event: str,
    date: str,
    message: Any,
    link_id: Any,
    source: Source,
) -> dict[str, Any]:
    """Publish one NIP delivery event and, for ERROR, decide on a resend.

    Used for NIP callbacks, for the ``link.events`` of status webhooks and for reconciler polls (the
    status object is the source of truth, assumption K2): the once-key (execution, event, date) makes
    the same delivery event count once whichever way it arrived.
    """
    event = event.upper()
    event_type = NIP_EVENT_TYPES.get(event)
    if event_type is None:
        log.warning("nip_event_unknown", execution_id=execution_id, nip_event=event[:40])
        return {"execution_id": execution_id, "event": event}
    once = f"nip:{execution_id}:{event}:{date}"
    data: dict[str, Any] = {"date": date, "link_id": link_id}
    fields: dict[str, str] = {}
    if event == "SUCCESS":
        fields["nip_delivered"] = "1"
    if event != "ERROR":
        publisher.publish(
            Event(type=event_type, execution_id=execution_id, source=source, data=data),
            once_key=once, state_key=_key(execution_id), state_fields=fields or None,
        )  # fmt: skip
        return {"execution_id": execution_id, "event": event}

    data["error_message"] = redactor.text(str(message))[:300] if message else None
    if conn.exists(keys.event_once(once)):
        return {"execution_id": execution_id, "event": event, "duplicate": True}
    known = state.load(conn, execution_id)
    decision = _resend_decision(conn, s, execution_id, known, message, date)
    data.update(decision)
    if decision["recoverable"]:  # before the publish: a crash in between re-schedules the same job id
        _schedule_resend(conn, s, execution_id, int(decision["resend"]))
    publisher.publish(
        Event(type=EventType.NIP_FAILED, execution_id=execution_id, source=source, data=data),
        once_key=once, state_key=_key(execution_id),
        state_fields=None if decision["recoverable"] else {state.NIP_FINAL_FAILED: "1"},
    )  # fmt: skip
    return {"execution_id": execution_id, "event": event, **decision}


def apply_link_events(
    conn: redis.Redis,
    s: Settings,
    publisher: Publisher,
    execution_id: str,
    status_body: dict[str, Any],
    source: Source,
) -> None:
    """The NIP delivery events listed in a status object (webhook body or polled status)."""
    link = status_body.get("link")
    if not isinstance(link, dict):
        return
    for item in link.get("events") or []:
        if isinstance(item, dict) and item.get("status") and item.get("date"):
            apply_nip_event(
                conn, s, publisher, execution_id, str(item["status"]), str(item["date"]),
                item.get("errorMessage"), None, source,
            )  # fmt: skip


def _key(execution_id: str) -> str:
    return keys.execution(execution_id)


def _resend_decision(
    conn: redis.Redis, s: Settings, execution_id: str, known: dict[str, str], message: Any, date: str
) -> dict[str, Any]:
    if known.get(state.TERMINAL) == "1":
        return {"recoverable": False, "resend": None, "why": "execution_finished"}
    if known.get("nip_delivered") == "1":
        return {"recoverable": False, "resend": None, "why": "already_delivered"}
    if destination_invalid(str(message) if message else None, s.nip_invalid_destination_patterns):
        return {"recoverable": False, "resend": None, "why": "invalid_destination"}
    if s.nip_max_resends <= 0:
        return {"recoverable": False, "resend": None, "why": "resends_disabled"}
    number = state.claim_nip_resend(conn, execution_id, date)
    if number > s.nip_max_resends:
        return {"recoverable": False, "resend": None, "why": "resends_exhausted"}
    return {"recoverable": True, "resend": number, "why": "will_resend"}


def _schedule_resend(conn: redis.Redis, s: Settings, execution_id: str, number: int) -> None:
    queue = Queue(s.bridge_queue, connection=conn, serializer=JOB_SERIALIZER)
    command: ResendNipCommand = {"execution_id": execution_id, "resend": number, "command_id": None}
    job_id = f"nip-resend-{execution_id}-{number}"
    delay = s.nip_resend_delay_seconds
    if delay > 0:
        queue.enqueue_in(
            timedelta(seconds=delay), RESEND_FUNCTION, command, job_id=job_id, meta=tracing.job_meta(),
            **job_options(s),
        )  # fmt: skip
    else:
        queue.enqueue(RESEND_FUNCTION, command, job_id=job_id, meta=tracing.job_meta(), **job_options(s))
    log.info("nip_resend_scheduled", execution_id=execution_id, resend=number, delay=delay)


# --- execution status webhook -------------------------------------------------------------------


def handle_status(payload: CallbackPayload) -> Any:
    conn, s = connection(), settings()
    execution_id = payload["execution_id"] or payload["body"].get("id")
    return guarded(conn, s, "status", execution_id, lambda: _status(conn, s, payload, execution_id))


def _status(
    conn: redis.Redis, s: Settings, payload: CallbackPayload, execution_id: str | None
) -> dict[str, Any]:
    publisher = Publisher(conn, s)
    body = payload["body"]
    status = str(body.get("status") or "").upper()
    _received(publisher, payload, execution_id, status or None)
    if not execution_id:
        return {"execution_id": None}
    link = body.get("link") if isinstance(body.get("link"), dict) else {}
    node_type = body.get("currentNodeType")
    phase = link.get("phase") if link else None
    terminal_known = state.is_terminal(conn, execution_id)
    fields = {}
    if not terminal_known:
        fields = {
            k: str(v)
            for k, v in (("kiban_status", status), ("node_type", node_type), ("nip_phase", phase))
            if v
        }
    publisher.publish(
        Event(
            type=EventType.WORKFLOO_STATUS_CHANGED, execution_id=execution_id, source=Source.KIBAN,
            data={"status": status or None, "node_type": node_type, "node_name": body.get("currentNodeName"),
                  "nip_phase": phase, "event_type": payload["event_type_header"]},
        ),
        once_key=f"status:{payload['event_id']}",
        state_key=_key(execution_id),
        state_fields=fields or None,
    )  # fmt: skip
    apply_link_events(conn, s, publisher, execution_id, body, Source.KIBAN)
    if status in TERMINAL_STATUSES:
        return finish(conn, s, execution_id, trigger="status")
    state.touch_open(conn, execution_id)
    return {"execution_id": execution_id, "status": status}


# --- end-of-workfloo API step, and the finish path shared with the reconciler --------------------


def handle_finished(payload: CallbackPayload) -> Any:
    conn, s = connection(), settings()
    execution_id = payload["execution_id"] or payload["body"].get("id")

    def run() -> dict[str, Any]:
        _received(Publisher(conn, s), payload, execution_id, "finished")
        if not execution_id:
            return {"execution_id": None}
        return finish(conn, s, execution_id, trigger="callback")

    return guarded(conn, s, "finished", execution_id, run)


def finish_execution(command: FinishCommand) -> Any:
    """The finish path as its own job (the reconciler enqueues it for executions it found terminal)."""
    conn, s = connection(), settings()
    execution_id = command["execution_id"]
    trigger = command["trigger"] or "reconciler"
    return guarded(conn, s, "finish", execution_id, lambda: finish(conn, s, execution_id, trigger=trigger))


def finish(conn: redis.Redis, s: Settings, execution_id: str, *, trigger: str) -> dict[str, Any]:
    """Fetch status and detail, publish the terminal event once, hand approved executions to Kompliant.

    Safe to run any number of times: the terminal event has ``once_key`` ``finished:<id>`` and the hand-off
    is idempotent, so a second run after a crash completes whatever the first one did not.
    """
    kiban = get_kiban_client(s)
    try:
        status = kiban.get_status(execution_id)
    except KibanNotFoundError:
        state.close(conn, execution_id)
        raise
    if not status.is_terminal:
        state.touch_open(conn, execution_id, refresh=False)
        raise TransientError(f"execution not terminal yet (status {status.status})")
    detail = kiban.get_detail(execution_id)
    outcome = normalise(execution_id, detail, s)
    if not outcome.terminal:  # the detail can lag the status endpoint
        outcome = normalise(execution_id, {**as_mapping(detail), "status": status.status}, s)
    if outcome.approved:  # on the follow-up set before anything closes the execution (reconcile.py)
        carrier = get_current_job()
        state.followup_register(
            conn, execution_id, carrier.id if carrier is not None else None,
            at=time.time() + s.bridge_followup_retry_seconds,
        )  # fmt: skip
    publisher = Publisher(conn, s)
    data = {**outcome.event_data(), "trigger": trigger}
    publisher.publish(
        Event(type=outcome.event_type, execution_id=execution_id, source=Source.KIBAN, data=data),
        once_key=f"finished:{execution_id}",
        state_key=_key(execution_id),
        state_fields={
            state.TERMINAL: "1",
            state.STATUS: outcome.status,
            state.DECISION: outcome.decision,
            state.FINISHED_AT: _now(),
        },
    )
    state.set_fields(conn, execution_id, {state.TERMINAL: "1"})
    state.close(conn, execution_id)
    result: dict[str, Any] = {
        "execution_id": execution_id,
        "status": outcome.status,
        "decision": outcome.decision,
    }
    if outcome.approved:
        handoff = Handoff(conn, s, get_kompliant_client(s), publisher).run(execution_id, outcome.applicant)
        state.followup_done(conn, execution_id)  # started or rejected: the hand-off is done
        result["kompliant"] = handoff.outcome
        result["workflow_id"] = handoff.workflow_id
    return result
