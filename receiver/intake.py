"""Durable, idempotent intake: the dedupe key and an ordinary RQ job written by one Lua call, and many
concurrent calls sent to Redis in one pipelined round trip (group commit).

How a job is built without RQ touching the network: RQ's own ``Queue.create_job`` + ``Queue.enqueue_job``
run against a *recording* pipeline whose connection can never connect. The commands RQ would have sent
(``SADD rq:queues``, ``HSET rq:job:<id> status``, ``HSET rq:job:<id> <fields>``, ``RPUSH rq:queue:<name>``;
checked at start-up against an allow-list, so an RQ upgrade that changes them fails loudly) are read
from ``pipeline.command_stack`` and replayed inside ``INTAKE_SCRIPT``, guarded by the dedupe key. The
job is therefore byte-for-byte what ``queue.enqueue(...)`` would store: standard workers, ``rq info`` and
the failed-job registry see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis._parsers.encoders import Encoder
from redis.exceptions import NoScriptError
from rq import Queue

from workers import keys
from workers.settings import Settings

# Order matters: the dedupe key is checked first and written LAST, so a command that fails half-way
# (only possible with a corrupted key type) leaves no dedupe key and the delivery can be retried.
# Under maxmemory, Redis rejects a script at its first write, so an OOM writes nothing at all.
INTAKE_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local i = 3
local n = #ARGV
while i <= n do
  local count = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return 1
"""
"""KEYS[1] = dedupe key; ARGV[1] = TTL seconds; ARGV[2] = value stored under the dedupe key;
ARGV[3..] = the recorded commands, each as ``<argc> <command> <args…>``. Returns 1 accepted, 0 duplicate."""

ALLOWED_COMMANDS: Final = frozenset({"SADD", "HSET", "RPUSH", "LPUSH", "EXPIRE"})

_ENCODER: Final = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]


class IntakeUnavailable(Exception):
    """Redis did not confirm the write in time (down, slow, or replied with an error)."""


class _NeverConnect(redis.Connection):
    """Connection class of the recording client: RQ must only queue commands on it, never send them."""

    def connect(self) -> None:
        raise RuntimeError("the RQ recording client must never connect")


class JobRecorder:
    """Builds an RQ job with RQ's own API and returns the Redis commands that would enqueue it."""

    def __init__(self, queue_name: str) -> None:
        self._client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=_NeverConnect))
        self.queue = Queue(queue_name, connection=self._client)
        # Only used to pick command variants; avoids an INFO round trip (never persisted on the job).
        self.queue.redis_server_version = (7, 0, 0)
        self._check()

    def record(self, func: str, payload: dict[str, Any], job_id: str, description: str) -> list[bytes]:
        """Flattened ``<argc> <command> <args…>`` list for ``INTAKE_SCRIPT``'s ARGV."""
        pipe = self._client.pipeline(transaction=False)
        job = self.queue.create_job(func, args=(payload,), job_id=job_id, description=description)
        self.queue.enqueue_job(job, pipeline=pipe)
        flat: list[bytes] = []
        encode = _ENCODER.encode
        for args, _options in pipe.command_stack:
            flat.append(str(len(args)).encode())
            flat.extend(encode(arg) for arg in args)  # type: ignore[no-untyped-call]
        return flat

    def _check(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        job = self.queue.create_job("builtins.len", args=((),), job_id="selfcheck")
        self.queue.enqueue_job(job, pipeline=pipe)
        used = {str(args[0]).upper() for args, _ in pipe.command_stack}
        if not used <= ALLOWED_COMMANDS or "RPUSH" not in used:
            raise RuntimeError(
                f"RQ enqueue issues unexpected commands {sorted(used)}; review receiver.intake"
            )


class GroupCommitter:
    """Sends the commands of concurrent requests to Redis in one non-transactional pipeline.

    Each caller appends ``(command, future, enqueued_at)``; one flusher task takes everything pending
    (up to ``max_batch``), sends it in one round trip and resolves the futures. While a batch is in
    flight the next one accumulates, so the batch size follows the load. Every failure (connection
    refused, timeout, cancelled read) fails only that batch's futures; the connection that failed is
    dropped by redis-py and the next batch reconnects, so an outage never wedges the flusher.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout: float,
        max_batch: int,
        scripts: Sequence[str] = (),
        batched: bool = True,
    ) -> None:
        self._client = client
        self.batched = batched
        self.timeout = timeout
        self._max_batch = max_batch
        self._scripts = list(scripts)
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any], float]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.commands = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="intake-flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail(self._pending, IntakeUnavailable("receiver shutting down"))
        self._pending = []

    async def submit(self, *command: Any) -> Any:
        """Run one command in the next batch; raises ``IntakeUnavailable`` when Redis does not answer."""
        if self._task is None or self._task.done():
            raise IntakeUnavailable("intake flusher is not running")
        if not self.batched:
            return await self._direct(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future, time.monotonic()))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any], float]]) -> None:
        # Requests that already waited a full timeout behind a slow batch get their 503 now.
        deadline = time.monotonic() - self.timeout
        live = []
        for item in batch:
            if item[1].done():  # the client went away
                continue
            if item[2] < deadline:
                item[1].set_exception(IntakeUnavailable("Redis is slow"))
                continue
            live.append(item)
        if not live:
            return
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._execute([item[0] for item in live])
                if self._scripts and any(isinstance(r, NoScriptError) for r in results):
                    # Redis restarted or SCRIPT FLUSH: load and resend only the affected commands.
                    for source in self._scripts:
                        await self._client.script_load(source)
                    retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                    again = await self._execute([live[i][0] for i in retry])
                    for i, result in zip(retry, again, strict=True):
                        results[i] = result
        except asyncio.CancelledError:
            self._fail(live, IntakeUnavailable("receiver shutting down"))
            raise
        except Exception as exc:  # any Redis/network failure fails this batch only
            self._fail(live, IntakeUnavailable(type(exc).__name__))
            return
        self.batches += 1
        self.commands += len(live)
        for (_cmd, future, _t), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(IntakeUnavailable(type(result).__name__))
            else:
                future.set_result(result)

    async def _direct(self, command: tuple[Any, ...]) -> Any:
        """One round trip per call on a pooled connection (``bridge_intake_group_commit=false``)."""
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    result = await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
                except NoScriptError:
                    for source in self._scripts:
                        await self._client.script_load(source)
                    result = await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise IntakeUnavailable(type(exc).__name__) from None
        self.batches += 1
        self.commands += 1
        return result

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    @staticmethod
    def _fail(items: list[tuple[tuple[Any, ...], asyncio.Future[Any], float]], exc: Exception) -> None:
        for _cmd, future, _t in items:
            if not future.done():
                future.set_exception(exc)


def intake_client(settings: Settings) -> aioredis.Redis:
    """Async Redis client of the receiver: no automatic retries (the intake answers 503 instead and the
    Lua script makes a re-delivery safe), socket timeouts no longer than the intake timeout, and a
    bounded pool that makes callers wait (within the timeout) rather than fail when it is exhausted."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout = min(settings.redis_timeout_seconds, settings.bridge_intake_timeout_seconds)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url or "redis://127.0.0.1:6379/0",
        max_connections=64,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return aioredis.Redis(connection_pool=pool)


class Intake:
    """``enqueue()``: write a dedupe key and an RQ job atomically, sharing round trips with other requests.

    Also the extension point for other receiver endpoints (``receiver/commands.py``) that enqueue jobs
    idempotently: ``await request.app.state.intake.enqueue(job_id, "pkg.module.func", payload, ...)``.
    """

    def __init__(
        self, settings: Settings, client: aioredis.Redis, recorder: JobRecorder | None = None
    ) -> None:
        self.client = client
        self.recorder = recorder or JobRecorder(settings.bridge_queue)
        self.committer = GroupCommitter(
            client,
            timeout=settings.bridge_intake_timeout_seconds,
            max_batch=settings.bridge_intake_max_batch,
            scripts=[INTAKE_SCRIPT],
            batched=settings.bridge_intake_group_commit,
        )
        self.queue_key = self.recorder.queue.key
        self._sha = hashlib.sha1(INTAKE_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis script id
        self._ttl = str(settings.bridge_dedupe_ttl_seconds).encode()

    async def start(self) -> None:
        self.committer.start()
        try:  # best effort: Redis may be down at start-up; NOSCRIPT is handled per batch anyway
            async with asyncio.timeout(self.committer.timeout):
                await self.client.script_load(INTAKE_SCRIPT)
        except Exception:  # noqa: S110
            pass

    async def stop(self) -> None:
        await self.committer.stop()

    async def enqueue(
        self, job_id: str, func: str, payload: dict[str, Any], *, description: str, stamp: str
    ) -> bool:
        """True when the job was written, False when ``job_id`` was seen within the dedupe TTL.
        Raises ``IntakeUnavailable`` when Redis did not confirm either way."""
        argv = self.recorder.record(func, payload, job_id, description)
        result = await self.committer.submit(
            "EVALSHA", self._sha, 1, keys.dedupe(job_id), self._ttl, stamp, *argv
        )
        return bool(result == 1)

    async def call(self, *command: Any) -> Any:
        """Any other Redis command through the shared pipeline (same timeout and 503 semantics)."""
        return await self.committer.submit(*command)
