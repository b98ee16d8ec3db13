"""Retry policy: full-jitter exponential backoff with a cap, Retry-After as a floor, a time budget
measured from the job's first attempt; every dead letter raises ``job.dead_lettered``."""

from __future__ import annotations

import time
from typing import Any

from workers.core.contract import JOB_SERIALIZER
from workers.core.errors import (
    BridgeError,
    ErrorBody,
    FieldError,
    KibanRetryableError,
    KibanValidationError,
    KompliantError,
    PermanentError,
    TransientError,
)
from workers.jobs.retry import RetryPolicy, is_retryable, reason_of


def policy(**overrides: float) -> RetryPolicy:
    values = {"base": 1.0, "cap": 30.0, "budget": 600.0, "retry_after_max": 120.0, **overrides}
    return RetryPolicy(
        base=values["base"],
        cap=values["cap"],
        budget=values["budget"],
        retry_after_max=values["retry_after_max"],
    )


def test_ceiling_doubles_per_attempt_and_is_capped() -> None:
    p = policy()
    top = [p.delay(n, rng=lambda: 1.0) for n in range(8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_full_jitter_spans_zero_to_ceiling() -> None:
    p = policy()
    assert p.delay(3, rng=lambda: 0.0) == 0.0
    assert p.delay(3, rng=lambda: 0.5) == 4.0


def test_retry_after_is_a_floor_and_is_clipped() -> None:
    p = policy()
    assert p.delay(0, retry_after=7.5, rng=lambda: 0.1) == 7.5
    assert p.delay(0, retry_after=10_000, rng=lambda: 0.1) == 120.0
    assert p.delay(5, retry_after=1.0, rng=lambda: 1.0) == 30.0


def test_the_budget_is_time_since_the_first_attempt_not_a_count() -> None:
    p = policy(budget=600.0)
    assert [p.can_retry(elapsed) for elapsed in (0.0, 599.9, 600.0, 7200.0)] == [True, True, False, False]
    # Hundreds of attempts are fine while the budget lasts.
    assert p.delay(500, rng=lambda: 1.0) == 30.0


def test_only_flagged_errors_retry() -> None:
    class Flagged(BridgeError):
        retryable = True

    assert is_retryable(TransientError("later"))
    assert is_retryable(Flagged())
    assert not is_retryable(PermanentError("never"))
    assert not is_retryable(ValueError("bug"))


def test_reason_is_redacted() -> None:
    error = KompliantError(
        "email ana@example.com already used",
        status_code=400,
        code="ACCOUNT_CONFIGURATION_VIOLATION",
        sub_code="DUPLICATE_EMAIL",
    )
    reason = reason_of(error)
    assert "ana@example.com" not in reason
    assert "http 400" in reason and "ACCOUNT_CONFIGURATION_VIOLATION/DUPLICATE_EMAIL" in reason


def test_reason_is_codes_without_vendor_text() -> None:
    """A vendor's free text echoes the input (a name, a street): only its codes reach the reason."""
    body = ErrorBody(
        type_error="VALIDATION_ERROR",
        message="Begoña Núñez, Calle Ámsterdam 250, is not allowed",
        fields={"last_name_1": FieldError("last_name_1", ("FORMAT_ERROR",), "Núñez has invalid characters")},
    )
    kiban = KibanValidationError(
        "Kiban executeWorkflooForm answered 400: Begoña Núñez, Calle Ámsterdam 250",
        operation="executeWorkflooForm", status_code=400, body=body,
    )  # fmt: skip
    assert reason_of(kiban) == (
        "KibanValidationError: executeWorkflooForm: http 400: VALIDATION_ERROR: "
        "fields last_name_1(FORMAT_ERROR)"
    )
    kompliant = KompliantError(
        "subject Begoña Núñez rejected",
        status_code=400,
        code="SYSTEM_RULE_VIOLATION",
        sub_code="WORKFLOW_ENDED",
    )
    assert reason_of(kompliant) == "KompliantError: http 400: SYSTEM_RULE_VIOLATION/WORKFLOW_ENDED"
    timeout = KibanRetryableError("Kiban getWorkflooStatus timed out", operation="getWorkflooStatus")
    timeout.__cause__ = TimeoutError()
    assert reason_of(timeout) == "KibanRetryableError: getWorkflooStatus: TimeoutError"
    assert reason_of(KeyError("Begoña")) == "KeyError"


# --- the policy inside a real RQ worker (in-process burst worker, real Redis) -----------------------

RUNS: list[float] = []
BUDGET = 0.4


def _settings_for_job() -> Any:
    from workers.core.settings import load_settings

    return load_settings(retry_base_seconds=0, bridge_retry_budget_seconds=BUDGET)


def always_unavailable() -> Any:
    from rq import get_current_job

    from workers.jobs.retry import guarded

    job = get_current_job()
    assert job is not None

    def body() -> None:
        RUNS.append(time.monotonic())
        raise TransientError("vendor still down", retry_after=None)

    return guarded(job.connection, _settings_for_job(), "probe", "exec-r", body)


def permanent_problem() -> Any:
    from rq import get_current_job

    from workers.jobs.retry import guarded

    job = get_current_job()
    assert job is not None

    def body() -> None:
        RUNS.append(time.monotonic())
        raise PermanentError("the form has no e-mail")

    return guarded(job.connection, _settings_for_job(), "probe", "exec-p", body)


def unguarded_bug(payload: dict[str, Any]) -> Any:
    raise KeyError("Begoña")  # a bug outside ``guarded``: still a dead letter, still a signal


def _work(redis_client: Any) -> None:
    from workers.core.settings import load_settings
    from workers.runtime.worker import build_worker

    build_worker(redis_client, load_settings(), cls="workers.runtime.worker.BridgeSimpleWorker").work(
        burst=True
    )


def _run(redis_client: Any, func: str, *args: Any) -> Any:
    from rq import Queue

    RUNS.clear()
    job = Queue("workfloo", connection=redis_client, serializer=JOB_SERIALIZER).enqueue(
        f"{__name__}.{func}", *args, job_id=f"probe-{func}"
    )
    _work(redis_client)
    return job


def _types(redis_client: Any, execution_id: str) -> list[str]:
    from workers.core.settings import load_settings
    from workers.fanout.publisher import Publisher

    return [e.type for e in Publisher(redis_client, load_settings()).timeline(execution_id)]


def test_retryable_error_is_retried_until_the_budget_then_dead_lettered(redis_client: Any) -> None:
    from workers.core.settings import load_settings
    from workers.fanout.publisher import Publisher
    from workers.runtime import dead_letters as dlq

    job = _run(redis_client, "always_unavailable")
    assert len(RUNS) > 3  # as many runs as the budget allows, not a fixed count
    assert RUNS[-1] - RUNS[0] >= BUDGET * 0.9
    assert job.get_status(refresh=True) == "failed"
    [letter] = dlq.list_dead_letters(redis_client, "workfloo")
    assert letter.job_id == job.id and letter.reason.startswith("retries exhausted: TransientError")
    events = Publisher(redis_client, load_settings()).timeline("exec-r")
    assert [e.type for e in events] == ["action.failed", "job.dead_lettered"]
    failed, dead = events
    assert failed.data["retryable"] is True and failed.data["attempts"] == len(RUNS)
    assert dead.data == {
        "function": f"{__name__}.always_unavailable",
        "job_id": job.id,
        "queue": "workfloo",
        "code": "retry_budget_spent",
        "reason": "TransientError: vendor still down",
        "dead_letters": 1,
    }


def test_a_replay_does_not_restart_the_budget(redis_client: Any) -> None:
    """The budget runs from the job's first attempt (kept in its meta): a replay with the vendor still
    down is one more attempt and a second dead letter, with a second ``job.dead_lettered``."""
    from workers.runtime import dead_letters as dlq

    job = _run(redis_client, "always_unavailable")
    first_runs = len(RUNS)
    dlq.replay(redis_client, "workfloo", job.id)
    RUNS.clear()
    _work(redis_client)
    assert len(RUNS) == 1, first_runs
    assert _types(redis_client, "exec-r").count("job.dead_lettered") == 2


def test_permanent_error_is_dead_lettered_at_once(redis_client: Any) -> None:
    from workers.core.settings import load_settings
    from workers.fanout.publisher import Publisher
    from workers.runtime import dead_letters as dlq

    job = _run(redis_client, "permanent_problem")
    assert len(RUNS) == 1
    [letter] = dlq.list_dead_letters(redis_client, "workfloo")
    assert letter.job_id == job.id and letter.reason.startswith("permanent: PermanentError")
    failed, dead = Publisher(redis_client, load_settings()).timeline("exec-p")
    assert failed.data["retryable"] is False and failed.data["action"] == "probe"
    assert dead.type == "job.dead_lettered" and dead.data["code"] == "permanent"


def test_an_unguarded_exception_is_a_dead_letter_with_a_signal(redis_client: Any) -> None:
    from workers.core.settings import load_settings
    from workers.fanout.publisher import Publisher

    job = _run(redis_client, "unguarded_bug", {"execution_id": "exec-u"})
    assert job.get_status(refresh=True) == "failed"
    [dead] = Publisher(redis_client, load_settings()).timeline("exec-u")
    assert dead.type == "job.dead_lettered"
    assert dead.data["code"] == "exception" and dead.data["reason"] == "KeyError"
    assert "Begoña" not in dead.to_json().decode()


def test_retry_after_survives_rqs_whole_second_scheduling(redis_client: Any) -> None:
    """RQ drops the sub-second part of a scheduled job's due time, so a job may start up to 1 s early:
    with a vendor Retry-After the interval gets that second back, plain backoff does not."""
    from datetime import UTC, datetime, timedelta

    from rq import Queue
    from rq.registry import ScheduledJobRegistry

    from workers.jobs.retry import _interval

    assert _interval(2.0, honour_floor=True) == 3.0
    assert _interval(0.3) == 0.3
    assert _interval(0.0, honour_floor=True) == 0
    # The truncation itself, so this test fails if RQ ever keeps sub-second due times.
    queue = Queue("probe", connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("workers.jobs.noop", job_id="probe-due")
    registry = ScheduledJobRegistry(queue=queue)
    due = datetime(2026, 11, 22, 23, 0, 0, 900_000, tzinfo=UTC)
    registry.schedule(job, due)
    assert redis_client.zscore(registry.key, job.id) == int(
        (due - timedelta(microseconds=900_000)).timestamp()
    )


def test_a_dead_letter_is_not_retried_by_rqs_retry_fields(redis_client: Any) -> None:
    """Bridge jobs carry RQ retry fields so RQ's abandoned-job cleanup re-queues them; a job that gives up
    (``JobFailedError``) must still be dead-lettered at once, not run again by RQ, and a replay gets its
    abandoned-job retries back."""
    from rq import Queue

    from workers.core.contract import abandoned_job_retry
    from workers.core.settings import load_settings
    from workers.runtime import dead_letters as dlq
    from workers.runtime.worker import build_worker

    RUNS.clear()
    settings = load_settings()
    retry = abandoned_job_retry(settings)
    assert retry is not None and retry.max == settings.reaper_max_requeues
    job = Queue("workfloo", connection=redis_client, serializer=JOB_SERIALIZER).enqueue(
        f"{__name__}.permanent_problem", job_id="probe-retry-fields", retry=retry
    )
    build_worker(redis_client, settings, cls="workers.runtime.worker.BridgeSimpleWorker").work(burst=True)
    assert len(RUNS) == 1
    assert job.get_status(refresh=True) == "failed"
    assert [letter.job_id for letter in dlq.list_dead_letters(redis_client, "workfloo")] == [job.id]
    replayed = dlq.replay(redis_client, "workfloo", job.id)
    assert replayed.retries_left == settings.reaper_max_requeues


def start_that_fails_after_execute() -> Any:
    from rq import get_current_job

    from workers.jobs.commands import _checkpoint
    from workers.jobs.retry import guarded

    job = get_current_job()
    assert job is not None

    def body() -> None:
        RUNS.append(time.monotonic())
        _checkpoint("execution_id", "exec-s")  # as start_application does once Kiban executed
        raise PermanentError("the form was refused")

    return guarded(job.connection, _settings_for_job(), "start_application", None, body)


def test_a_failed_start_names_the_execution_it_created(redis_client: Any) -> None:
    from workers.core.settings import load_settings
    from workers.fanout.publisher import Publisher

    _run(redis_client, "start_that_fails_after_execute")
    failed, dead = Publisher(redis_client, load_settings()).timeline("exec-s")
    assert failed.type == "action.failed" and failed.execution_id == "exec-s"
    assert dead.type == "job.dead_lettered"


def test_a_dead_letter_requeued_by_rq_itself_fails_loudly_again(redis_client: Any) -> None:
    """``rq requeue`` and rq-dashboard requeue through RQ's registry, without ``dlq replay``'s meta:
    the second failure still publishes its own ``action.failed``."""
    from rq.registry import FailedJobRegistry

    job = _run(redis_client, "permanent_problem")
    FailedJobRegistry("workfloo", connection=redis_client, serializer=JOB_SERIALIZER).requeue(job.id)
    _work(redis_client)
    assert len(RUNS) == 2
    types = _types(redis_client, "exec-p")
    assert types.count("job.dead_lettered") == 2
    assert types.count("action.failed") == 2, types
