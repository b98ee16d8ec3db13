"""The reconciler sweep against real Redis and a Kiban over real HTTP: one bad execution never stops the
sweep, a 404 is not polled forever, a re-enqueue never runs a second copy nor restarts a retry budget, and
the follow-up set re-runs hand-offs whose job is dead or gone.

Kiban here is a small app answering what the fake cannot: a malformed status body and a 404 for an
execution the bridge knows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workers.core import keys
from workers.core.contract import (
    DEAD_LETTER_CODE,
    JOB_SERIALIZER,
    PERMANENT,
    RETRY_BUDGET_SPENT,
    RETRY_STARTED_AT,
)
from workers.core.settings import Settings, load_settings
from workers.jobs import reconcile, state
from workers.jobs.callbacks import FINISH_FUNCTION
from workers.sandbox.serving import ServerThread

ANSWERS: dict[str, tuple[int, dict[str, Any]]] = {
    "bad": (200, {"status": "PROGRESS", "link": {"events": "not a list"}}),  # no id, wrong shapes
    "gone": (404, {"typeError": "NOT_FOUND", "message": "execution not found"}),
    "ok": (200, {"id": "ok", "status": "PROGRESS"}),
    "done": (200, {"id": "done", "status": "SUCCESS"}),
}


def kiban_app() -> Starlette:
    async def status(request: Request) -> JSONResponse:
        code, body = ANSWERS[request.path_params["id"]]
        return JSONResponse(body, status_code=code)

    return Starlette(routes=[Route("/api/v1/workfloo/status/{id}", status)])


@pytest.fixture
def sweep_settings(redis_url: str, serve: Callable[..., ServerThread]) -> Settings:
    server = serve(kiban_app())
    return load_settings(
        redis_url=redis_url,
        kiban_base_url=server.url,
        kiban_api_key="k",
        reconcile_after_seconds=1,
        bridge_reconcile_not_found_polls=2,
        bridge_followup_retry_seconds=5,
    )


def _open(client: redis.Redis, *execution_ids: str, at: float = 0.0) -> None:
    for execution_id in execution_ids:
        state.set_fields(client, execution_id, {state.CREATED_AT: "x"})
        state.touch_open(client, execution_id, at=at)


def _queue(client: redis.Redis) -> Queue:
    return Queue("workfloo", connection=client, serializer=JOB_SERIALIZER)


def test_a_malformed_answer_skips_one_execution_not_the_sweep(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    _open(redis_client, "bad", "ok")
    result = reconcile.sweep(redis_client, sweep_settings, now=100.0)
    assert result["skipped"] == ["bad"] and result["waiting"] == ["ok"]
    # Both pushed forward by the poll backoff; the bad one is polled again later, not dropped.
    assert state.due_for_reconcile(redis_client, 100.0, 10) == []
    assert redis_client.zscore(keys.OPEN_EXECUTIONS, "bad") is not None


def test_a_404_is_dropped_from_the_open_set_after_n_polls(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    _open(redis_client, "gone", "ok")
    first = reconcile.sweep(redis_client, sweep_settings, now=100.0)
    assert first["dropped"] == [] and redis_client.zscore(keys.OPEN_EXECUTIONS, "gone") is not None
    second = reconcile.sweep(redis_client, sweep_settings, now=100_000.0)
    assert second["dropped"] == ["gone"]
    assert redis_client.zscore(keys.OPEN_EXECUTIONS, "gone") is None
    assert redis_client.zscore(keys.OPEN_EXECUTIONS, "ok") is not None


def test_a_live_finish_job_is_left_alone_not_copied_nor_reset(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    """The finish job of a terminal execution is waiting for its retry: the sweep neither enqueues a
    second copy nor replaces the job (which would reset its retry count and budget)."""
    _open(redis_client, "done")
    queue = _queue(redis_client)
    job = queue.enqueue_in(
        timedelta(seconds=600), FINISH_FUNCTION, {"execution_id": "done", "trigger": "callback"},
        job_id="finish-done", meta={RETRY_STARTED_AT: 12.5},
    )  # fmt: skip
    job.number_of_retries = 7
    job.save()
    reconcile.sweep(redis_client, sweep_settings, now=100.0)
    again = Job.fetch("finish-done", connection=redis_client, serializer=JOB_SERIALIZER)
    assert again.get_status() == JobStatus.SCHEDULED
    assert again.number_of_retries == 7 and again.meta[RETRY_STARTED_AT] == 12.5
    assert queue.job_ids == []  # no copy waiting to run beside the scheduled one


def _dead(client: redis.Redis, job_id: str, execution_id: str, code: str, **meta: Any) -> Job:
    job = _queue(client).enqueue(
        FINISH_FUNCTION, {"execution_id": execution_id, "trigger": "callback"}, job_id=job_id,
        meta={DEAD_LETTER_CODE: code, **meta},
    )  # fmt: skip
    _queue(client).remove(job)
    job.set_status(JobStatus.FAILED)
    FailedJobRegistry("workfloo", connection=client, serializer=JOB_SERIALIZER).add(job, ttl=600)
    return job


def test_a_dead_finish_job_is_requeued_with_its_budget(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    _open(redis_client, "done")
    _dead(redis_client, "finish-done", "done", RETRY_BUDGET_SPENT, **{RETRY_STARTED_AT: 12.5})
    reconcile.sweep(redis_client, sweep_settings, now=100.0)
    again = Job.fetch("finish-done", connection=redis_client, serializer=JOB_SERIALIZER)
    assert again.get_status() == JobStatus.QUEUED and again.meta[RETRY_STARTED_AT] == 12.5
    assert _queue(redis_client).job_ids == ["finish-done"]
    assert "finish-done" not in FailedJobRegistry(
        "workfloo", connection=redis_client, serializer=JOB_SERIALIZER
    )


def _pending(client: redis.Redis, execution_id: str, carrier: str | None) -> None:
    state.set_fields(client, execution_id, {state.TERMINAL: "1"})
    state.followup_register(client, execution_id, carrier, at=50.0)


def test_followup_reruns_a_hand_off_dead_after_its_budget(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    _pending(redis_client, "e-dead", "cb-job")
    _dead(redis_client, "cb-job", "e-dead", RETRY_BUDGET_SPENT, **{RETRY_STARTED_AT: 1.0})
    result = reconcile.sweep(redis_client, sweep_settings, now=100.0)
    assert result["followup"] == {"rerun": ["e-dead"], "parked": []}
    job = Job.fetch("cb-job", connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.get_status() == JobStatus.QUEUED and job.meta[RETRY_STARTED_AT] == 1.0
    assert redis_client.zscore(keys.FOLLOWUP_PENDING, "e-dead") == 105.0  # looked at again later
    # Next sweep, the re-run still queued: nothing more.
    assert reconcile.sweep(redis_client, sweep_settings, now=200.0)["followup"]["rerun"] == []
    assert _queue(redis_client).job_ids == ["cb-job"]


def test_followup_reruns_a_hand_off_whose_job_is_gone(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    _pending(redis_client, "e-gone", "expired-job")
    result = reconcile.sweep(redis_client, sweep_settings, now=100.0)
    assert result["followup"]["rerun"] == ["e-gone"]
    job = Job.fetch("finish-e-gone", connection=redis_client, serializer=JOB_SERIALIZER)
    assert list(job.args) == [{"execution_id": "e-gone", "trigger": "followup"}]
    assert _queue(redis_client).job_ids == ["finish-e-gone"]


def test_followup_leaves_a_live_hand_off_and_parks_a_permanent_one(
    redis_client: redis.Redis, sweep_settings: Settings
) -> None:
    _pending(redis_client, "e-live", "live-job")
    _queue(redis_client).enqueue_in(timedelta(seconds=60), FINISH_FUNCTION, {}, job_id="live-job")
    _pending(redis_client, "e-perm", "perm-job")
    _dead(redis_client, "perm-job", "e-perm", PERMANENT)
    result = reconcile.sweep(redis_client, sweep_settings, now=100.0)
    assert result["followup"] == {"rerun": [], "parked": ["e-perm"]}
    assert _queue(redis_client).job_ids == []
    assert "perm-job" in FailedJobRegistry("workfloo", connection=redis_client, serializer=JOB_SERIALIZER)
    assert redis_client.zscore(keys.FOLLOWUP_PENDING, "e-live") == 105.0
    assert (
        redis_client.zscore(keys.FOLLOWUP_PENDING, "e-perm") == 100.0 + sweep_settings.job_failure_ttl_seconds
    )


def test_one_sweep_at_a_time(redis_client: redis.Redis, sweep_settings: Settings) -> None:
    _open(redis_client, "ok")
    held = state.Lock(redis_client, keys.reconcile_lock(), 5)
    assert held.acquire()
    assert reconcile.sweep(redis_client, sweep_settings, now=100.0) == {"skipped": True}
    held.release()
    assert reconcile.sweep(redis_client, sweep_settings, now=100.0)["waiting"] == ["ok"]
