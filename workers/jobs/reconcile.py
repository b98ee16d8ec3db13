"""Reconciliation: heal lost end-of-workfloo callbacks by polling Kiban's status endpoint.

``reconcile_open_executions`` is registered with RQ's own ``CronScheduler`` (``workfloo-bridge
scheduler``) every ``reconcile_interval_seconds``. It takes the executions in ``keys.OPEN_EXECUTIONS``
idle for ``reconcile_after_seconds`` or more, polls each one, and

* terminal → enqueues ``finish_execution`` (job id ``finish-<execution>``: the finish path is
  idempotent, so a duplicate of a callback-driven finish is harmless);
* not terminal → applies the NIP delivery events the status lists (a lost NIP callback heals here), and
  pushes its score forward by the poll backoff (``reconcile_poll_backoff_seconds``
  doubling per poll, capped at ``reconcile_poll_backoff_cap_seconds``);
* vendor error → the same backoff; the next sweep tries again.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Queue

from workers.core.contract import JOB_SERIALIZER
from workers.core.errors import VendorError
from workers.core.events import Source
from workers.core.log import get_logger
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import connection, settings, state
from workers.jobs.callbacks import FINISH_FUNCTION, FinishCommand, apply_link_events, job_options
from workers.jobs.outcome import as_mapping
from workers.vendors.kiban.client import get_kiban_client

log = get_logger(__name__)


def poll_backoff(s: Settings, polls: int) -> float:
    return float(
        min(s.reconcile_poll_backoff_cap_seconds, s.reconcile_poll_backoff_seconds * 2 ** min(polls, 32))
    )


def _defer(conn: redis.Redis, s: Settings, execution_id: str, now: float) -> None:
    polls = state.count_reconcile_poll(conn, execution_id) - 1
    # Score = "last activity": pretend activity happened so the next poll is due after the backoff.
    next_score = now - s.reconcile_after_seconds + poll_backoff(s, polls)
    state.touch_open(conn, execution_id, at=next_score)


def reconcile_open_executions() -> dict[str, Any]:
    conn, s = connection(), settings()
    return sweep(conn, s)


def sweep(conn: redis.Redis, s: Settings, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    due = state.due_for_reconcile(conn, now - s.reconcile_after_seconds, s.reconcile_batch)
    kiban = get_kiban_client(s)
    queue = Queue(s.bridge_queue, connection=conn, serializer=JOB_SERIALIZER)
    publisher = Publisher(conn, s)
    finished: list[str] = []
    waiting: list[str] = []
    for execution_id in due:
        if state.is_terminal(conn, execution_id):
            state.close(conn, execution_id)
            continue
        try:
            status = kiban.get_status(execution_id)
        except VendorError as exc:
            log.warning("reconcile_poll_failed", execution_id=execution_id, status_code=exc.status_code)
            _defer(conn, s, execution_id, now)
            continue
        if status.is_terminal:
            command: FinishCommand = {"execution_id": execution_id, "trigger": "reconciler"}
            queue.enqueue(
                FINISH_FUNCTION,
                command,
                job_id=f"finish-{execution_id}",
                **job_options(s),
            )
            # Keep it open (pushed forward) until the finish job marks it terminal.
            _defer(conn, s, execution_id, now)
            finished.append(execution_id)
        else:
            # Lost NIP callbacks heal here too: the polled status lists every delivery event.
            apply_link_events(conn, s, publisher, execution_id, as_mapping(status), Source.KIBAN)
            _defer(conn, s, execution_id, now)
            waiting.append(execution_id)
    if due:
        log.info("reconcile_sweep", due=len(due), finishing=len(finished), waiting=len(waiting))
    return {"due": len(due), "finishing": finished, "waiting": waiting}
