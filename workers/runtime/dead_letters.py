"""Dead letters: RQ's ``FailedJobRegistry`` of the bridge queue, listed and replayed.

A job lands there when it raised a permanent error, spent its retry budget, or kept killing workers
(``workers.runtime.reaper.reap_abandoned``). Replay requeues the **same job id** (so the job's own idempotency
keys still apply), with its retry count reset and ``dlq_replays`` in its meta bumped. The ``action.failed``
once-key is numbered by the job's dead letters (``DEAD_LETTERS``), so a run requeued any other way
(``rq requeue``, rq-dashboard) publishes its own too.

Every landing in the registry by the bridge's path (a job failing in a bridge worker, the reaper's poison
pills) publishes ``job.dead_lettered`` (``publish_dead_lettered``): function, job id, queue, execution
id, a code from ``workers.core.contract.DEAD_LETTER_CODES`` and a codes-only reason, never the job's
arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from workers.core.contract import (
    CRASH_REQUEUES,
    DEAD_LETTER_CODE,
    DEAD_LETTERS,
    EXCEPTION,
    JOB_SERIALIZER,
    PERMANENT,
    TIMEOUT,
    abandoned_job_retry,
)
from workers.core.errors import JobFailedError
from workers.core.events import Event, EventType
from workers.core.log import error_reason, get_logger
from workers.core.metrics import count_dead_letter
from workers.core.settings import Settings, get_settings
from workers.fanout.publisher import Publisher

log = get_logger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    function: str | None
    failed_at: str | None
    reason: str
    execution_id: str | None
    replays: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reason(job: Job) -> str:
    text = ""
    try:
        result = job.latest_result()
    except Exception:  # an unreadable result must not hide the dead letter
        result = None
    if result is not None and result.exc_string:
        text = result.exc_string
    elif job._exc_info:
        text = job._exc_info
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown"
    last = lines[-1]
    for prefix in ("workers.core.errors.JobFailedError: ", "JobFailedError: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last[:500]


def _failed_at(job: Job) -> str | None:
    when: datetime | None = job.ended_at
    if when is None:
        try:
            result = job.latest_result()
        except Exception:
            result = None
        when = result.created_at if result is not None else None
    return when.isoformat() if when else None


def _function(job: Job) -> str | None:
    """None when the job data is not JSON (a pickled job, refused by the workers): still listed."""
    try:
        return job.func_name
    except DeserializationError:
        return None


def _execution_id(job: Job) -> str | None:
    try:
        args = job.args
    except Exception:
        return None
    if args and isinstance(args[0], dict):
        value = args[0].get("execution_id")
        if value:
            return str(value)
    meta_value = job.meta.get("execution_id")
    return str(meta_value) if meta_value else None


def registry(connection: redis.Redis, queue_name: str) -> FailedJobRegistry:
    return FailedJobRegistry(queue_name, connection=connection, serializer=JOB_SERIALIZER)


def list_dead_letters(connection: redis.Redis, queue_name: str) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    for job_id in registry(connection, queue_name).get_job_ids():
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JOB_SERIALIZER)
        except NoSuchJobError:
            continue
        letters.append(
            DeadLetter(
                job_id=job.id,
                function=_function(job),
                failed_at=_failed_at(job),
                reason=_reason(job),
                execution_id=_execution_id(job),
                replays=int(job.meta.get("dlq_replays", 0)),
            )
        )
    return letters


def replay(connection: redis.Redis, queue_name: str, job_id: str) -> Job:
    """Requeue one dead letter with its id; raises ``LookupError`` when it is not in the registry."""
    failed = registry(connection, queue_name)
    if job_id not in failed:
        raise LookupError(f"{job_id} is not in the dead-letter registry of {queue_name}")
    job = Job.fetch(job_id, connection=connection, serializer=JOB_SERIALIZER)
    job.meta["dlq_replays"] = int(job.meta.get("dlq_replays", 0)) + 1
    job.meta.pop(CRASH_REQUEUES, None)
    job.number_of_retries = 0
    settings = get_settings()
    retry = abandoned_job_retry(settings)
    if job.origin == settings.bridge_queue and retry is not None:  # what giving up cleared
        job.retries_left, job.retry_intervals = retry.max, retry.intervals
    job.save()
    try:
        return failed.requeue(job)
    except InvalidJobOperation as exc:  # replayed concurrently
        raise LookupError(f"{job_id} was already replayed") from exc


def replay_all(connection: redis.Redis, queue_name: str) -> list[str]:
    done: list[str] = []
    for job_id in registry(connection, queue_name).get_job_ids():
        try:
            replay(connection, queue_name, job_id)
        except (LookupError, NoSuchJobError):
            continue
        done.append(job_id)
    return done


def queue(connection: redis.Redis, queue_name: str) -> Queue:
    return Queue(queue_name, connection=connection, serializer=JOB_SERIALIZER)


# --- the signal -------------------------------------------------------------------------------


def _job_execution_id(job: Job) -> str | None:
    try:
        args = job.args
    except Exception:  # an undeserialisable job still gets its signal
        return None
    if args and isinstance(args[0], dict) and args[0].get("execution_id"):
        return str(args[0]["execution_id"])
    recorded = job.meta.get("execution_id")
    return str(recorded) if recorded else None


def _job_function(job: Job) -> str | None:
    try:
        return job.func_name
    except Exception:
        return None


def dead_letter_of(exc: BaseException | None, job: Job) -> tuple[str, str]:
    """(code, reason) of a job the worker is failing: ``guarded``'s own code when it decided, else
    ``timeout`` or ``exception``; the reason is codes only (``error_reason``)."""
    if isinstance(exc, JobFailedError):
        text = str(exc)
        for prefix in ("retries exhausted: ", "permanent: "):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        code = str(job.meta.get(DEAD_LETTER_CODE) or PERMANENT)
        return code, text
    if exc is None:
        return EXCEPTION, "unknown"
    if type(exc).__name__ == "JobTimeoutException":
        return TIMEOUT, error_reason(exc)
    return EXCEPTION, error_reason(exc)


def publish_dead_lettered(
    connection: redis.Redis, settings: Settings, job: Job, *, code: str, reason: str
) -> None:
    """``job.dead_lettered`` for a job landing in the failed registry: function, job id, queue, execution
    id, a code and a codes-only reason; never the job's arguments. Best effort (Redis may be down)."""
    count_dead_letter(_job_function(job) or "unknown", code)
    count = int(job.meta.get(DEAD_LETTERS, 0)) + 1
    job.meta[DEAD_LETTERS] = count
    job.meta[DEAD_LETTER_CODE] = code
    execution_id = _job_execution_id(job)
    try:
        job.save_meta()  # type: ignore[no-untyped-call]
        Publisher(connection, settings).publish(
            Event(
                type=EventType.JOB_DEAD_LETTERED,
                execution_id=execution_id,
                data={
                    "function": _job_function(job),
                    "job_id": job.id,
                    "queue": job.origin,
                    "code": code,
                    "reason": reason,
                    "dead_letters": count,
                },
            ),
            once_key=f"job-dead-lettered:{job.id}:{count}",
        )
    except redis.RedisError:
        log.warning("dead_letter_not_published", job_id=job.id, code=code)
        return
    log.error("job_dead_lettered", job_id=job.id, execution_id=execution_id, code=code, reason=reason)
