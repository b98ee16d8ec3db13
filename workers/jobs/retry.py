"""Retry policy for worker jobs: exponential backoff with full jitter and a cap, ``Retry-After`` honoured,
for as long as a time budget lasts.

Only a ``BridgeError`` whose ``retryable`` is true (a ``TransientError``, a vendor's 429/5xx/timeout…)
and Redis connection trouble are retried, by *returning* ``rq.Retry`` from the job (RQ 3 re-schedules
the same job id after the interval, so the job needs a worker started with the scheduler); the error's
``retry_after`` is the floor of the wait. Retries go on until ``bridge_retry_budget_seconds`` have passed
since the job's first failed attempt (``RETRY_STARTED_AT`` in the job's meta, so neither a crash
requeue, a reconciler requeue nor a ``dlq replay`` restarts the budget: once it is spent, every further
run is one attempt). Anything else, or a retryable error past the budget, publishes ``action.failed``
with the reason and raises ``JobFailedError``: RQ moves the job into its ``FailedJobRegistry`` (the
dead-letter list ``dlq`` shows), and the worker publishes ``job.dead_lettered``
(``workers.runtime.dead_letters``).

There is no attempt count: with full jitter a count says nothing about how long a job kept trying, and
any count shorter than an outage loses the work (docs/reliability.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from rq import Retry, get_current_job
from rq.job import Job

from workers.core.contract import (
    DEAD_LETTER_CODE,
    DEAD_LETTERS,
    PERMANENT,
    RETRY_BUDGET_SPENT,
    RETRY_STARTED_AT,
)
from workers.core.errors import BridgeError, JobFailedError, LeaseLostError
from workers.core.events import Event, EventType
from workers.core.log import error_reason, get_logger
from workers.core.metrics import count_retry
from workers.core.settings import Settings
from workers.jobs import lease

T = TypeVar("T")

log = get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    base: float
    cap: float
    budget: float
    retry_after_max: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base=settings.retry_base_seconds,
            cap=settings.retry_cap_seconds,
            budget=settings.bridge_retry_budget_seconds,
            retry_after_max=settings.retry_after_max_seconds,
        )

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0 = the first run).

        Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``. A vendor ``Retry-After`` is a floor
        (clipped to ``retry_after_max`` so a hostile header cannot park a job for days).
        """
        ceiling = min(self.cap, self.base * (2 ** min(attempt, 32)))
        wait = rng() * ceiling
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.retry_after_max))
        return float(wait)

    def can_retry(self, elapsed: float) -> bool:
        """True while less than ``budget`` seconds have passed since the first failed attempt."""
        return elapsed < self.budget


def is_retryable(exc: BaseException) -> bool:
    """True for a ``BridgeError`` flagged retryable and for Redis connection trouble."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True
    return isinstance(exc, BridgeError) and exc.retryable


def reason_of(exc: BaseException) -> str:
    """The reason for ``action.failed``, the dead-letter list and log fields: built from codes only
    (``workers.core.log.error_reason``), never from a vendor's free text, which may echo the input."""
    return error_reason(exc)


def current_attempt() -> int:
    """0 on a job's first run, n after n retries (RQ's ``number_of_retries``)."""
    job = get_current_job()
    if job is None:
        return 0
    return int(job.number_of_retries or 0)


def _failure_once_key(action: str) -> str | None:
    """One ``action.failed`` per landing in the dead-letter registry: numbered by the job's dead letters so
    far (``DEAD_LETTERS``, counted by the worker as the job lands there), so a run after any requeue —
    ``dlq replay``, ``rq requeue``, rq-dashboard, the reconciler — publishes its own."""
    job = get_current_job()
    if job is None:
        return None
    return f"action-failed:{job.id}:{int(job.meta.get(DEAD_LETTERS, 0))}"


def _recorded_execution_id() -> str | None:
    """The execution id the running job checkpointed (``start_application`` after Kiban's execute)."""
    job = get_current_job()
    value = job.meta.get("execution_id") if job is not None else None
    return str(value) if value else None


def publish_action_failed(
    connection: redis.Redis,
    settings: Settings,
    *,
    action: str,
    execution_id: str | None,
    reason: str,
    retryable: bool,
    attempts: int,
) -> None:
    """Best-effort ``action.failed`` (Redis may be the thing that is down)."""
    from workers.fanout.publisher import Publisher

    job = get_current_job()
    event = Event(
        type=EventType.ACTION_FAILED,
        execution_id=execution_id,
        data={
            "action": action,
            "job_id": job.id if job is not None else None,
            "reason": reason,
            "retryable": retryable,
            "attempts": attempts,
        },
    )
    try:
        Publisher(connection, settings).publish(event, once_key=_failure_once_key(action))
    except redis.RedisError:
        log.warning("action_failed_not_published", action=action, execution_id=execution_id)


def retry_started_at(job: Job | None) -> float:
    """The start of the job's retry budget: its first failed attempt, recorded in its meta on the first
    failure (the start of that run) and read back on every later one, whoever requeued the job."""
    now = time.time()
    if job is None:
        return now
    recorded = job.meta.get(RETRY_STARTED_AT)
    if isinstance(recorded, int | float):
        return float(recorded)
    started = job.started_at.timestamp() if job.started_at is not None else now
    job.meta[RETRY_STARTED_AT] = started
    job.save_meta()  # type: ignore[no-untyped-call]
    return started


def _mark_dead_letter(code: str, execution_id: str | None) -> None:
    job = get_current_job()
    if job is not None:
        job.meta[DEAD_LETTER_CODE] = code
        if execution_id:  # ``dlq list`` and ``job.dead_lettered`` name it even when the args do not
            job.meta["execution_id"] = execution_id
        try:
            job.save_meta()  # type: ignore[no-untyped-call]
        except redis.RedisError:
            log.warning("dead_letter_code_not_saved", job_id=job.id, code=code)


def guarded(
    connection: redis.Redis,
    settings: Settings,
    action: str,
    execution_id: str | None,
    body: Callable[[], T],
) -> T | Retry:
    """Run ``body`` under the retry policy; return its value, an ``rq.Retry``, or raise ``JobFailedError``."""
    policy = RetryPolicy.from_settings(settings)
    attempt = current_attempt()
    try:
        lease.begin(connection, settings)  # inside: Redis trouble here is retried like any other
        return body()
    except Exception as exc:
        if isinstance(exc, LeaseLostError) or not lease.current(connection):
            stood_down: T = _stood_down(action, execution_id)  # a newer run owns the job: no retry,
            return stood_down  # no dead letter
        retryable = is_retryable(exc)
        reason = reason_of(exc)
        execution_id = execution_id or _recorded_execution_id()
        elapsed = 0.0
        if retryable:
            try:
                elapsed = time.time() - retry_started_at(get_current_job())
            except redis.RedisError:  # Redis is what failed: retry, the budget is checked next time
                elapsed = 0.0
        if retryable and policy.can_retry(elapsed):
            retry_after = exc.retry_after if isinstance(exc, BridgeError) else None
            delay = policy.delay(attempt, retry_after)
            log.warning(
                "job_retry", action=action, execution_id=execution_id, attempt=attempt + 1,
                delay=round(delay, 3), elapsed=round(elapsed, 3), reason=reason,
            )  # fmt: skip
            count_retry(_function_name(action))
            # The budget decides, never RQ's count: ``max`` stays one above the retries so far.
            return Retry(max=attempt + 2, interval=[_interval(delay, honour_floor=bool(retry_after))])
        log.error(
            "job_failed", action=action, execution_id=execution_id, attempts=attempt + 1,
            retryable=retryable, elapsed=round(elapsed, 3), reason=reason,
        )  # fmt: skip
        publish_action_failed(
            connection, settings, action=action, execution_id=execution_id, reason=reason,
            retryable=retryable, attempts=attempt + 1,
        )  # fmt: skip
        _mark_dead_letter(RETRY_BUDGET_SPENT if retryable else PERMANENT, execution_id)
        _no_rq_retry()
        prefix = "retries exhausted: " if retryable else "permanent: "
        raise JobFailedError(prefix + reason) from exc


def _function_name(action: str) -> str:
    """The running job's function path (the label of every job metric); the action outside a job."""
    job = get_current_job()
    try:
        return (job.func_name if job is not None else None) or action
    except Exception:  # an undeserialisable job still counts
        return action


def _stood_down(action: str, execution_id: str | None) -> Any:
    """What a run that lost its lease returns; the worker records nothing for it (``lease.stood_down``)."""
    log.warning("job_stood_down", action=action, execution_id=execution_id)
    return {"stood_down": True}


def _no_rq_retry() -> None:
    """A job that gives up is a dead letter now: its RQ retry fields (``contract.abandoned_job_retry``)
    are for a worker that died, so RQ must not run it again for the exception it raises."""
    job = get_current_job()
    if job is not None:
        job.retries_left = 0


def _interval(delay: float, honour_floor: bool = False) -> Any:
    """RQ schedules on whole seconds; 0 means "requeue now" (no scheduler round trip).

    ``ScheduledJobRegistry.schedule`` drops the sub-second part of the due time and the scheduler
    compares whole seconds, so a job can start up to 1 s *before* the interval asked for. That is fine
    for backoff, not for a vendor's Retry-After (a floor): then one second is added so the floor holds.
    """
    if honour_floor and delay > 0:
        delay += 1.0
    return round(delay, 3) if delay >= 0.001 else 0
