"""Reconciliation: heal lost end-of-workfloo callbacks by polling Kiban's status endpoint, and see every
approved execution's Kompliant hand-off through to its end.

``reconcile_open_executions`` is registered with RQ's own ``CronScheduler`` (``workfloo-bridge
scheduler``) every ``reconcile_interval_seconds``; one sweep runs at a time (``keys.reconcile_lock``).

Open executions (``keys.OPEN_EXECUTIONS``) idle for ``reconcile_after_seconds`` or more are polled:

* terminal → a ``finish_execution`` job (id ``finish-<execution>``) unless one is already queued,
  scheduled or running; a dead-lettered one is requeued with its meta, so its retry budget goes on;
* not terminal → the NIP delivery events the status lists are applied (a lost NIP callback heals here),
  and the score is pushed forward by the poll backoff (``reconcile_poll_backoff_seconds`` doubling per
  poll, capped at ``reconcile_poll_backoff_cap_seconds``);
* vendor error or an answer that does not parse → the same backoff, a log code, and the sweep goes on;
* ``bridge_reconcile_not_found_polls`` Kiban 404s in a row → dropped from the open set
  (``reconcile_execution_dropped``, code ``kiban_not_found``).

Follow-up pending (``keys.FOLLOWUP_PENDING``): an approved execution stays there from the moment the
finish path decides to hand it off until the hand-off started or was rejected. For each due entry the
sweep looks at the job carrying the hand-off (``state.FOLLOWUP_JOB``): alive → look again later; dead-
lettered after its retry budget or a timeout, gone, or ended without removing the entry → run it again
(the failed job requeued with its id and meta, else ``finish-<execution>``), at most every
``bridge_followup_retry_seconds``; dead-lettered on a permanent error, a bug or repeated worker deaths →
left to the operator (``dlq replay``) and looked at again when the dead letter expires. The finish
path is idempotent, so a re-run completes whatever the dead one did not.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from pydantic import ValidationError
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from workers.core import keys, tracing
from workers.core.contract import (
    DEAD_LETTER_CODE,
    JOB_SERIALIZER,
    RETRY_BUDGET_SPENT,
    RETRY_STARTED_AT,
    TIMEOUT,
)
from workers.core.errors import KibanNotFoundError, VendorError
from workers.core.events import Source
from workers.core.log import error_reason, get_logger
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import connection, settings, state
from workers.jobs.callbacks import FINISH_FUNCTION, FinishCommand, apply_link_events, job_options
from workers.jobs.outcome import as_mapping
from workers.vendors.kiban.client import get_kiban_client

log = get_logger(__name__)

ALIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED, JobStatus.DEFERRED})
RERUN_CODES = frozenset({RETRY_BUDGET_SPENT, TIMEOUT})
"""Dead letters the follow-up re-runs by itself: the vendor (or the job's time) ran out, not the data.
A permanent error, a bug (``exception``) or a job that kept killing workers (``abandoned``) would fail
the same way again: those wait for an operator's ``dlq replay``."""


def poll_backoff(s: Settings, polls: int) -> float:
    return float(
        min(s.reconcile_poll_backoff_cap_seconds, s.reconcile_poll_backoff_seconds * 2 ** min(polls, 32))
    )


def _defer(conn: redis.Redis, s: Settings, execution_id: str, now: float) -> None:
    polls = state.count_reconcile_poll(conn, execution_id) - 1
    # Score = "last activity": pretend activity happened so the next poll is due after the backoff.
    next_score = now - s.reconcile_after_seconds + poll_backoff(s, polls)
    state.touch_open(conn, execution_id, at=next_score)


def finish_job_id(execution_id: str) -> str:
    return f"finish-{execution_id}"


def _fetch(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        return None


def _status(job: Job) -> JobStatus | None:
    try:
        return job.get_status(refresh=False)
    except Exception:  # a hash without a status
        return None


def _requeue_dead(conn: redis.Redis, job: Job) -> bool:
    """Requeue a dead-lettered job with its id and meta (its retry budget goes on; the next
    ``action.failed`` gets a fresh once-key, as after ``dlq replay``). False when it left the registry
    meanwhile (an operator replayed it)."""
    job.meta["dlq_replays"] = int(job.meta.get("dlq_replays", 0)) + 1
    job.save_meta()  # type: ignore[no-untyped-call]
    try:
        FailedJobRegistry(job.origin, connection=conn, serializer=JOB_SERIALIZER).requeue(job)
    except InvalidJobOperation:
        return False
    return True


def ensure_finish(conn: redis.Redis, s: Settings, queue: Queue, execution_id: str, trigger: str) -> str:
    """Make sure the finish path of ``execution_id`` runs once more, never two copies at a time.

    ``running``: its job is queued, scheduled or started (nothing done); ``requeued``: its dead letter
    went back to the queue (same id and meta); ``enqueued``: a new job, carrying the retry budget start of
    an ended one with the same id."""
    job_id = finish_job_id(execution_id)
    job = _fetch(conn, job_id)
    meta: dict[str, Any] = {}
    if job is not None:
        status = _status(job)
        if status in ALIVE:
            return "running"
        if status == JobStatus.FAILED:
            return "requeued" if _requeue_dead(conn, job) else "running"
        if job.meta.get(RETRY_STARTED_AT) is not None:
            meta[RETRY_STARTED_AT] = job.meta[RETRY_STARTED_AT]
    command: FinishCommand = {"execution_id": execution_id, "trigger": trigger}
    queue.enqueue(FINISH_FUNCTION, command, job_id=job_id, meta=tracing.job_meta(meta), **job_options(s))
    return "enqueued"


def reconcile_open_executions() -> dict[str, Any]:
    conn, s = connection(), settings()
    return sweep(conn, s)


def sweep(conn: redis.Redis, s: Settings, now: float | None = None) -> dict[str, Any]:
    lock = state.Lock(conn, keys.reconcile_lock(), s.job_timeout_seconds)
    if not lock.acquire():
        log.info("reconcile_sweep_skipped", code="sweep_in_progress")
        return {"skipped": True}
    try:
        now = time.time() if now is None else now
        queue = Queue(s.bridge_queue, connection=conn, serializer=JOB_SERIALIZER)
        result = _sweep_open(conn, s, queue, now)
        result["followup"] = _sweep_followup(conn, s, queue, now)
        conn.set(keys.RECONCILE_LAST_SWEEP, repr(time.time()))  # read by the metrics (sweep age)
        return result
    finally:
        lock.release()


def _sweep_open(conn: redis.Redis, s: Settings, queue: Queue, now: float) -> dict[str, Any]:
    due = state.due_for_reconcile(conn, now - s.reconcile_after_seconds, s.reconcile_batch)
    kiban = get_kiban_client(s)
    publisher = Publisher(conn, s)
    finished: list[str] = []
    waiting: list[str] = []
    skipped: list[str] = []
    dropped: list[str] = []
    for execution_id in due:
        if state.is_terminal(conn, execution_id):
            state.close(conn, execution_id)
            continue
        try:
            status = kiban.get_status(execution_id)
        except KibanNotFoundError:
            misses = state.count_not_found(conn, execution_id)
            if misses >= s.bridge_reconcile_not_found_polls:
                state.close(conn, execution_id)
                log.warning(
                    "reconcile_execution_dropped", execution_id=execution_id, code="kiban_not_found",
                    polls=misses,
                )  # fmt: skip
                dropped.append(execution_id)
            else:
                _defer(conn, s, execution_id, now)
            continue
        except VendorError as exc:
            log.warning("reconcile_poll_failed", execution_id=execution_id, status_code=exc.status_code)
            _defer(conn, s, execution_id, now)
            continue
        except ValidationError:
            # One malformed answer must not stop every sweep: skip this execution, come back later.
            log.warning("reconcile_poll_failed", execution_id=execution_id, code="kiban_malformed_status")
            _defer(conn, s, execution_id, now)
            skipped.append(execution_id)
            continue
        state.clear_not_found(conn, execution_id)
        try:
            if status.is_terminal:
                ensure_finish(conn, s, queue, execution_id, "reconciler")
                # Keep it open (pushed forward) until the finish job marks it terminal.
                finished.append(execution_id)
            else:
                # Lost NIP callbacks heal here too: the polled status lists every delivery event.
                apply_link_events(conn, s, publisher, execution_id, as_mapping(status), Source.KIBAN)
                waiting.append(execution_id)
        except redis.RedisError:
            raise
        except Exception as exc:  # one execution's trouble is logged; the others are still reconciled
            log.warning("reconcile_execution_failed", execution_id=execution_id, reason=error_reason(exc))
            skipped.append(execution_id)
        _defer(conn, s, execution_id, now)
    if due:
        log.info(
            "reconcile_sweep", due=len(due), finishing=len(finished), waiting=len(waiting),
            skipped=len(skipped), dropped=len(dropped),
        )  # fmt: skip
    return {
        "due": len(due),
        "finishing": finished,
        "waiting": waiting,
        "skipped": skipped,
        "dropped": dropped,
    }


def _sweep_followup(conn: redis.Redis, s: Settings, queue: Queue, now: float) -> dict[str, list[str]]:
    """Re-run the hand-off of approved executions whose job is gone or dead-lettered."""
    rerun: list[str] = []
    parked: list[str] = []
    for execution_id in state.followup_due(conn, now, s.reconcile_batch):
        known = state.load(conn, execution_id)
        if not known:  # forgotten or past retention: nothing left to hand off safely
            state.followup_done(conn, execution_id)
            log.warning("followup_dropped", execution_id=execution_id, code="execution_state_gone")
            continue
        next_look = now + s.bridge_followup_retry_seconds
        carrier_id = known.get(state.FOLLOWUP_JOB)
        carrier = _fetch(conn, carrier_id) if carrier_id else None
        status = _status(carrier) if carrier is not None else None
        if carrier is not None and status in ALIVE:
            state.followup_defer(conn, execution_id, next_look)
            continue
        if carrier is not None and status == JobStatus.FAILED:
            code = str(carrier.meta.get(DEAD_LETTER_CODE) or RETRY_BUDGET_SPENT)
            if code not in RERUN_CODES:
                # The operator's (dlq replay); looked at again when the dead letter expires.
                state.followup_defer(conn, execution_id, now + s.job_failure_ttl_seconds)
                log.warning("followup_parked", execution_id=execution_id, job_id=carrier.id, code=code)
                parked.append(execution_id)
                continue
            how = "requeued" if _requeue_dead(conn, carrier) else "running"
        else:
            how = ensure_finish(conn, s, queue, execution_id, "followup")
        state.followup_defer(conn, execution_id, next_look)
        log.warning(
            "followup_rerun", execution_id=execution_id, job_id=carrier_id, how=how,
            carrier_status=str(status) if status is not None else "gone",
        )  # fmt: skip
        rerun.append(execution_id)
    return {"rerun": rerun, "parked": parked}
