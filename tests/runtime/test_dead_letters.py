"""Dead letters: a failed job is listed with its reason and replayed under the same id."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job, JobStatus

from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.runtime import dead_letters as dlq
from workers.runtime.worker import build_worker

QUEUE = "workfloo"


def test_list_and_replay_preserve_the_job_id(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    queue.enqueue("operator.truediv", 1, 0, job_id="div-by-zero")
    worker = build_worker(redis_client, load_settings(), cls="workers.runtime.worker.BridgeSimpleWorker")
    worker.work(burst=True)

    letters = dlq.list_dead_letters(redis_client, QUEUE)
    assert [(x.job_id, x.function) for x in letters] == [("div-by-zero", "operator.truediv")]
    assert "ZeroDivisionError" in letters[0].reason
    assert letters[0].failed_at

    job = dlq.replay(redis_client, QUEUE, "div-by-zero")
    assert job.id == "div-by-zero"
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert dlq.list_dead_letters(redis_client, QUEUE) == []
    assert (
        Job.fetch("div-by-zero", connection=redis_client, serializer=JOB_SERIALIZER).meta["dlq_replays"] == 1
    )


def test_replay_of_unknown_id_is_refused(redis_client: redis.Redis) -> None:
    try:
        dlq.replay(redis_client, QUEUE, "nope")
    except LookupError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("replay of an unknown id must fail")
