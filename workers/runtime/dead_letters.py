"""Dead letters: RQ's ``FailedJobRegistry`` of the bridge queue, listed and replayed.

A job lands there when it raised a permanent error, used up its retries, or kept killing workers
(``workers.runtime.reaper.reap_abandoned``). Replay requeues the **same job id** (so the job's own idempotency
keys still apply), with its retry count reset; ``dlq_replays`` in the job's meta gives the replayed run a
fresh ``action.failed`` once-key.
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

from workers.core.contract import CRASH_REQUEUES, JOB_SERIALIZER, abandoned_job_retry
from workers.core.settings import get_settings


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
