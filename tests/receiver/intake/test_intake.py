"""Durability of the intake: Redis outages and slowness, script cache loss, atomicity, group commit, and
jobs that a real RQ worker runs."""

from __future__ import annotations

import asyncio
import json
import signal
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from receiver.intake import Intake, IntakeUnavailableError, resp
from receiver.intake.batching import GroupCommitter
from receiver.intake.rqjob import SCRIPT_ARGV, SCRIPT_KEYS, JobRecorder, _lua_string, utc_stamp
from tests.receiver.conftest import KEY, ReceiverClient
from workers.core import keys
from workers.core.contract import JOB_SERIALIZER, abandoned_job_retry
from workers.core.settings import load_settings
from workers.sandbox.redis_server import RedisServer

EXECUTION_ID = "657118e1d511b6e54fe2a969"
NIP_PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
AUTH = {"x-api-key": KEY}


def nip(n: int) -> dict[str, Any]:
    return {"event": "SENT", "date": f"2026-11-22T23:00:{n:02d}Z", "linkId": "L1"}


@pytest.mark.parametrize("group_commit", [True, False])
def test_redis_down_gives_503_then_recovers_without_restart(
    start_receiver: Callable[..., ReceiverClient],
    private_redis: RedisServer,
    group_commit: bool,
    transport: str,
) -> None:
    client = start_receiver(
        private_redis.url,
        bridge_retry_after_seconds=7,
        bridge_intake_group_commit=group_commit,
        bridge_intake_transport=transport,
    )
    assert client.post(NIP_PATH, json=nip(1), headers=AUTH).status_code == 200

    private_redis.stop()
    down = client.post(NIP_PATH, json=nip(2), headers=AUTH)
    assert down.status_code == 503
    assert down.headers["retry-after"] == "7"
    assert down.json()["error"] == "redis_unavailable"
    assert client.internal.get("/readyz").status_code == 503
    assert "receiver_queue_depth" in client.internal.get("/metrics").text  # scrape still works while down

    private_redis.start()  # appendonly: the first job survived; the script cache did not
    assert client.internal.get("/readyz").status_code == 200
    again = client.post(NIP_PATH, json=nip(2), headers=AUTH)
    assert again.status_code == 200
    assert again.json()["status"] == "accepted"  # the refused delivery was not half-stored
    assert client.post(NIP_PATH, json=nip(1), headers=AUTH).json()["status"] == "duplicate"
    assert redis.Redis.from_url(private_redis.url).llen("rq:queue:workfloo") == 2


def test_slow_redis_gives_503_within_the_timeout_and_recovers(
    start_receiver: Callable[..., ReceiverClient], private_redis: RedisServer, transport: str
) -> None:
    client = start_receiver(
        private_redis.url, bridge_intake_timeout_seconds=0.3, bridge_intake_transport=transport
    )
    assert client.post(NIP_PATH, json=nip(1), headers=AUTH).status_code == 200
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        slow = client.post(NIP_PATH, json=nip(2), headers=AUTH)
        assert slow.status_code == 503
        assert "retry-after" in slow.headers
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    # The timed-out connection was dropped: later answers are not shifted by the late reply.
    answers = [client.post(NIP_PATH, json=nip(n), headers=AUTH).json() for n in (3, 1, 4)]
    assert [a["status"] for a in answers] == ["accepted", "duplicate", "accepted"]


def test_script_flush_is_survived(
    start_receiver: Callable[..., ReceiverClient], redis_url: str, redis_client: redis.Redis, transport: str
) -> None:
    receiver = start_receiver(redis_url, bridge_intake_transport=transport)
    assert receiver.post(NIP_PATH, json=nip(1), headers=AUTH).status_code == 200
    redis_client.script_flush()
    assert receiver.post(NIP_PATH, json=nip(2), headers=AUTH).json()["status"] == "accepted"
    assert redis_client.llen("rq:queue:workfloo") == 2


def test_a_failing_write_leaves_no_dedupe_key(
    start_receiver: Callable[..., ReceiverClient], redis_url: str, redis_client: redis.Redis, transport: str
) -> None:
    """If a replayed command fails (here: rq:queues has the wrong type), the delivery is refused and can
    be retried later: the dedupe key is written last."""
    receiver = start_receiver(redis_url, bridge_intake_transport=transport)
    redis_client.set("rq:queues", "not a set")
    failed = receiver.post(NIP_PATH, json=nip(1), headers=AUTH)
    assert failed.status_code == 503
    assert redis_client.keys(keys.dedupe("*")) == []
    assert redis_client.llen("rq:queue:workfloo") == 0
    redis_client.delete("rq:queues")
    assert receiver.post(NIP_PATH, json=nip(1), headers=AUTH).json()["status"] == "accepted"


def test_job_written_by_the_intake_runs_on_a_real_rq_worker(redis_url: str, transport: str) -> None:
    settings = load_settings(redis_url=redis_url, bridge_intake_transport=transport)

    async def enqueue() -> bool:
        intake = Intake(settings)
        await intake.start()
        try:
            return await intake.enqueue(
                "job-1", "builtins.len", {"a": 1, "b": 2}, description="test", stamp=utc_stamp()
            )
        finally:
            await intake.stop()

    assert asyncio.run(enqueue()) is True
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("workfloo", connection=connection, serializer=JOB_SERIALIZER)
    assert queue.job_ids == ["job-1"]
    SimpleWorker([queue], connection=connection, serializer=JOB_SERIALIZER).work(burst=True)
    job = Job.fetch("job-1", connection=connection, serializer=JOB_SERIALIZER)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == 2
    assert queue.count == 0


def test_intake_jobs_carry_the_configured_job_options_and_every_rq_key_expires(
    redis_url: str, transport: str
) -> None:
    """A finished and a failed intake job, run by a plain RQ worker: the job hashes and their
    ``rq:results:<id>`` records expire after the configured result and failure TTLs."""
    settings = load_settings(
        redis_url=redis_url, bridge_intake_transport=transport, job_timeout_seconds=42,
        job_result_ttl_seconds=1234, job_failure_ttl_seconds=5678,
    )  # fmt: skip

    async def enqueue() -> None:
        intake = Intake(settings)
        await intake.start()
        try:
            await intake.enqueue("ok-1", "builtins.len", {"a": 1}, description="ok", stamp=utc_stamp())
            await intake.enqueue("bad-1", "builtins.int", {"a": 1}, description="bad", stamp=utc_stamp())
        finally:
            await intake.stop()

    asyncio.run(enqueue())
    connection = redis.Redis.from_url(redis_url)
    queued = connection.hgetall("rq:job:ok-1")
    assert (queued[b"timeout"], queued[b"result_ttl"], queued[b"failure_ttl"]) == (b"42", b"1234", b"5678")
    SimpleWorker(
        [Queue("workfloo", connection=connection, serializer=JOB_SERIALIZER)],
        connection=connection,
        serializer=JOB_SERIALIZER,
    ).work(burst=True)
    assert (
        Job.fetch("ok-1", connection=connection, serializer=JOB_SERIALIZER).get_status() == JobStatus.FINISHED
    )
    assert (
        Job.fetch("bad-1", connection=connection, serializer=JOB_SERIALIZER).get_status() == JobStatus.FAILED
    )
    for key, ttl in {
        "rq:job:ok-1": 1234, "rq:results:ok-1": 1234, "rq:job:bad-1": 5678, "rq:results:bad-1": 5678,
    }.items():  # fmt: skip
        assert ttl - 5 <= connection.ttl(key) <= ttl, key
    per_job = [k.decode() for k in connection.scan_iter("*") if b"ok-1" in k or b"bad-1" in k]
    assert per_job, "the jobs left no keys at all"
    assert [key for key in per_job if connection.ttl(key) < 0] == []


def test_recorded_commands_are_what_rq_enqueue_writes(redis_url: str, transport: str) -> None:
    """Same keys, fields and types as ``Queue.enqueue`` (timestamps aside)."""
    connection = redis.Redis.from_url(redis_url)
    settings = load_settings(redis_url=redis_url, bridge_queue="reference", bridge_intake_transport=transport)
    Queue("reference", connection=connection, serializer=JOB_SERIALIZER).enqueue_call(
        "builtins.len", args=({"a": 1},), job_id="ref-1", timeout=settings.job_timeout_seconds,
        result_ttl=settings.job_result_ttl_seconds, failure_ttl=settings.job_failure_ttl_seconds,
        retry=abandoned_job_retry(settings),
    )  # fmt: skip
    reference = connection.hgetall("rq:job:ref-1")

    async def enqueue() -> None:
        intake = Intake(settings)
        await intake.start()
        try:
            await intake.enqueue("ours-1", "builtins.len", {"a": 1}, description="x", stamp=utc_stamp())
        finally:
            await intake.stop()

    asyncio.run(enqueue())
    ours = connection.hgetall("rq:job:ours-1")
    assert set(ours) == set(reference)
    for field in (
        b"status", b"origin", b"timeout", b"result_ttl", b"failure_ttl", b"retries_left", b"retry_intervals",
    ):  # fmt: skip
        assert ours[field] == reference[field]
    # Same job tuple; stored uncompressed inside the zlib stream (receiver.intake.rqjob.zlib_stored).
    assert zlib.decompress(ours[b"data"]) == zlib.decompress(reference[b"data"])
    # JSON, never pickle: the job tuple as plain JSON, which the bridge's JSON workers read.
    assert json.loads(zlib.decompress(ours[b"data"])) == ["builtins.len", None, [{"a": 1}], {}]
    assert Job.fetch("ours-1", connection=connection, serializer=JOB_SERIALIZER).args == [{"a": 1}]
    assert connection.lrange("rq:queue:reference", 0, -1) == [b"ref-1", b"ours-1"]


@pytest.mark.parametrize("group_commit", [True, False])
async def test_concurrent_requests_share_round_trips(
    redis_url: str, group_commit: bool, transport: str
) -> None:
    settings = load_settings(
        redis_url=redis_url, bridge_intake_group_commit=group_commit, bridge_intake_transport=transport
    )
    intake = Intake(settings)
    await intake.start()
    try:
        results = await asyncio.gather(
            *(
                intake.enqueue(f"job-{n % 50}", "builtins.len", {"n": n}, description="x", stamp=utc_stamp())
                for n in range(200)
            )
        )
    finally:
        await intake.stop()
    assert results.count(True) == 50
    assert intake.committer.commands == 200
    if group_commit:
        assert intake.committer.batches < 20  # typically 1-2
    else:
        assert intake.committer.batches == 200
    assert await asyncio.to_thread(redis.Redis.from_url(redis_url).llen, "rq:queue:workfloo") == 50


async def test_flusher_survives_errors_and_stops_cleanly(private_redis: RedisServer, transport: str) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url, socket_timeout=0.5)
    committer = GroupCommitter(client, timeout=0.5, max_batch=2, transport=transport)
    with pytest.raises(IntakeUnavailableError):
        await committer.submit("PING")  # not started
    committer.start()
    try:
        assert await asyncio.gather(*(committer.submit("PING") for _ in range(5))) == [b"PONG"] * 5
        bad = await asyncio.gather(committer.submit("NOSUCHCOMMAND"), return_exceptions=True)
        assert isinstance(bad[0], IntakeUnavailableError)
        private_redis.stop()
        with pytest.raises(IntakeUnavailableError):
            await committer.submit("PING")
        private_redis.start()
        assert await committer.submit("PING") == b"PONG"
    finally:
        await committer.stop()
        await client.aclose()


async def test_call_reads_array_replies_and_keeps_the_connection_in_step(
    redis_url: str, transport: str
) -> None:
    """Arrays (LRANGE, nested ones too) are read whole, so the next command on the same pipelined
    connection gets its own reply, not the rest of the array."""
    settings = load_settings(redis_url=redis_url, bridge_intake_transport=transport)
    intake = Intake(settings)
    await intake.start()
    try:
        await intake.call("RPUSH", "list", "a", "b", "c")
        assert await intake.call("LRANGE", "list", 0, -1) == [b"a", b"b", b"c"]
        assert await intake.call("LRANGE", "missing", 0, -1) == []
        nested = await intake.call("EVAL", "return {1, {'x', 2}}", 0)
        assert nested == [1, [b"x", 2]]
        assert await intake.call("PING") == b"PONG"
    finally:
        await intake.stop()


async def test_the_transport_setting_picks_the_raw_io(
    redis_url: str, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each transport carries the intake on its own: the one not chosen is never called."""
    calls: list[str] = []
    for name, exchange in resp.TRANSPORTS.items():

        async def spy(*args: Any, _name: str = name, _exchange: Any = exchange) -> list[Any]:
            calls.append(_name)
            result: list[Any] = await _exchange(*args)
            return result

        monkeypatch.setitem(resp.TRANSPORTS, name, spy)
    # The stream transport reads replies itself; the redis-py one never does.
    if transport == "redis-py":
        monkeypatch.setattr(resp, "read_reply", None)
    intake = Intake(load_settings(redis_url=redis_url, bridge_intake_transport=transport))
    await intake.start()
    try:
        assert await intake.call("PING") == b"PONG"
        assert await intake.enqueue("job-1", "builtins.len", {}, description="x", stamp=utc_stamp())
    finally:
        await intake.stop()
    assert calls and set(calls) == {transport}


def test_recorder_never_touches_the_network() -> None:
    recorder = JobRecorder("workfloo")
    commands = recorder.record("builtins.len", {"a": 1}, "abc", "description")
    assert [c[0] for c in commands] == [b"SADD", b"HSET", b"HSET", b"RPUSH"]
    assert commands[-1] == [b"RPUSH", b"rq:queue:workfloo", b"abc"]
    with pytest.raises(RuntimeError, match="never connect"):
        recorder.queue.connection.ping()


def test_job_script_rejects_ids_rq_would_reject() -> None:
    with pytest.raises(ValueError, match="Job ID"):
        JobRecorder("workfloo").record("builtins.len", {}, "bad id", "x")


def test_lua_literals_carry_every_byte(redis_client: redis.Redis) -> None:
    every_byte = bytes(range(256)) + b"\\1\\0123"
    assert redis_client.eval(f"return {_lua_string(every_byte)}", 0) == every_byte


def test_evalsha_follows_the_one_keys_and_argv_table() -> None:
    """The EVALSHA framing and the Lua header both come from rqjob.SCRIPT_KEYS / SCRIPT_ARGV."""
    script = JobRecorder("workfloo").script("builtins.len")
    names = [name for name in (*SCRIPT_KEYS, *SCRIPT_ARGV) if name not in ("static_keys", "ttl")]
    frame = script.evalsha({"ttl": b"60"}, {name: n for n, name in enumerate(names)})
    command = frame([resp.bulk(b"<" + name.encode() + b">") for name in names])
    count, _, rest = command.partition(b"\r\n")
    args = rest.split(b"\r\n")[1::2]
    assert count == b"*%d" % len(args)
    static = list(script.static_keys)
    assert args == [
        b"EVALSHA", script.sha.encode(), b"%d" % (2 + len(static)), b"<dedupe>", b"<job_key>", *static,
        b"60", b"<stamp>", b"<job_id>", b"<created_at>", b"<enqueued_at>", b"<data>", b"<description>",
    ]  # fmt: skip
    assert script.source.startswith(f"-- KEYS: {', '.join(SCRIPT_KEYS)}. ARGV: {', '.join(SCRIPT_ARGV)}\n")


def test_rq_cleanup_requeues_an_abandoned_intake_job_instead_of_failing_it(
    redis_url: str, transport: str
) -> None:
    """All workers down longer than RQ's cleanup window: the first ``count`` of the started registry (a
    ``status``, ``rq info``, a dashboard) runs RQ's own cleanup, which fails a job without retries left
    (``AbandonedJobError``). Receiver-written jobs carry RQ retry fields, so it re-queues them."""
    settings = load_settings(redis_url=redis_url, bridge_intake_transport=transport, reaper_max_requeues=3)

    async def enqueue() -> None:
        intake = Intake(settings)
        await intake.start()
        try:
            await intake.enqueue("orphan-1", "builtins.len", {"a": 1}, description="x", stamp=utc_stamp())
        finally:
            await intake.stop()

    asyncio.run(enqueue())
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("workfloo", connection=connection, serializer=JOB_SERIALIZER)
    job = Job.fetch("orphan-1", connection=connection, serializer=JOB_SERIALIZER)
    assert job.retries_left == 3
    # A worker took it and died: STARTED, out of the queue, its started-registry entry long expired.
    job.set_status(JobStatus.STARTED)
    connection.lrem(queue.key, 0, job.id)
    connection.zadd(queue.started_job_registry.key, {f"{job.id}:exec1": 1.0})

    assert queue.started_job_registry.count == 0  # RQ's cleanup ran
    assert FailedJobRegistry("workfloo", connection=connection, serializer=JOB_SERIALIZER).count == 0
    assert queue.job_ids == ["orphan-1"]
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    SimpleWorker([queue], connection=connection, serializer=JOB_SERIALIZER).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
