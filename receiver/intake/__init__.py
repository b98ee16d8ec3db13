"""Durable, idempotent intake: the dedupe key and an ordinary RQ job written by one Lua call
(``receiver.intake.rqjob``), and the calls of concurrent requests sent to Redis in one pipelined round trip
(group commit)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from receiver.intake.rqjob import JOB_KEY_PREFIX, JobRecorder, JobScript
from workers.core import keys
from workers.core.redis_client import async_redis_from_url, connection_kwargs, is_sentinel_url
from workers.core.settings import Settings


class IntakeUnavailable(Exception):
    """Redis did not confirm the write in time (down, slow, or replied with an error)."""


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
        max_in_flight: int = 1,
        scripts: list[str] | None = None,
        batched: bool = True,
    ) -> None:
        self._client = client
        self._max_in_flight = max_in_flight
        self._flushes: set[asyncio.Task[None]] = set()
        self.batched = batched
        self.timeout = timeout
        self._max_batch = max_batch
        self._scripts = scripts if scripts is not None else []  # shared: the owner may add scripts later
        self._pending: list[tuple[bytes, asyncio.Future[Any], float]] = []
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
        for flush in list(self._flushes):
            flush.cancel()
        await asyncio.gather(*self._flushes, return_exceptions=True)
        self._fail(self._pending, IntakeUnavailable("receiver shutting down"))
        self._pending = []

    async def submit(self, *command: Any) -> Any:
        """Run one command in the next batch; raises ``IntakeUnavailable`` when Redis does not answer."""
        return await self.submit_packed(pack(command))

    async def submit_packed(self, command: bytes) -> Any:
        """Same as ``submit`` for a command already in RESP (``pack``)."""
        if self._task is None or self._task.done():
            raise IntakeUnavailable("intake flusher is not running")
        if not self.batched:
            return await self._direct(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future, time.monotonic()))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        # Up to max_in_flight batches on the wire at once (each on its own pooled connection): the
        # next batch goes out while Redis still runs the previous one, so neither side idles.
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self._max_in_flight)
        while True:
            await self._wake.wait()
            # One more loop turn lets requests whose bytes arrived in the same poll join this batch.
            await asyncio.sleep(0)
            self._wake.clear()
            while self._pending:
                await slots.acquire()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                if not batch:  # taken by nobody else, but stay safe
                    slots.release()
                    break
                flush = loop.create_task(self._flush(batch))
                self._flushes.add(flush)
                flush.add_done_callback(self._flushes.discard)
                flush.add_done_callback(lambda _: slots.release())

    async def _flush(self, batch: list[tuple[bytes, asyncio.Future[Any], float]]) -> None:
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

    async def _direct(self, command: bytes) -> Any:
        """One round trip per call on a pooled connection (``bridge_intake_group_commit=false``)."""
        try:
            async with asyncio.timeout(self.timeout):
                (result,) = await self._execute([command])
                if isinstance(result, NoScriptError):
                    for source in self._scripts:
                        await self._client.script_load(source)
                    (result,) = await self._execute([command])
        except Exception as exc:
            raise IntakeUnavailable(type(exc).__name__) from None
        if isinstance(result, Exception):
            raise IntakeUnavailable(type(result).__name__)
        self.batches += 1
        self.commands += 1
        return result

    async def _execute(self, commands: list[bytes]) -> list[Any]:
        """All commands in one write, then one reply each (a non-transactional pipeline without
        redis-py's per-pipeline and per-reply bookkeeping). Error replies are returned, not raised; a
        connection that fails or is cancelled mid-way is closed, never handed back with unread replies.

        redis-py's connection does the connecting (auth, db, TLS, sentinel); the bytes go through its
        stream reader/writer directly when it exposes them, with redis-py's own calls as the fallback."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if not connection.is_connected:
                await connection.connect()
            reader = getattr(connection, "_reader", None)
            writer = getattr(connection, "_writer", None)
            if isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter):
                writer.write(b"".join(commands))
                await writer.drain()
                results = [await _read_reply(reader) for _ in commands]
            else:  # pragma: no cover - other redis-py internals
                await connection.send_packed_command(b"".join(commands), check_health=False)
                results = []
                for _ in commands:
                    try:
                        results.append(await connection.read_response())
                    except ResponseError as exc:
                        results.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return results

    @staticmethod
    def _fail(items: list[tuple[bytes, asyncio.Future[Any], float]], exc: Exception) -> None:
        for _cmd, future, _t in items:
            if not future.done():
                future.set_exception(exc)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    """One reply: integer, status, error, bulk string, null and arrays of them (RESP2, and the RESP3
    forms redis-py may negotiate), so ``Intake.call`` takes any ordinary command."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, body = line[:1], line[1:-2]
    if kind == b":":
        return int(body)
    if kind == b"+":
        return body
    if kind == b"$":
        size = int(body)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"_":
        return None
    if kind in (b"*", b"~"):
        count = int(body)
        return None if count < 0 else [await _read_reply(reader) for _ in range(count)]
    if kind == b"#":
        return body == b"t"
    if kind in (b"-", b"!"):
        if kind == b"!":
            body = (await reader.readexactly(int(body) + 2))[:-2]
        message = body.decode(errors="replace")
        return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
    raise ResponseError(f"unexpected reply type {kind!r} for an intake command")


def pack_args(args: Iterable[bytes | str | int]) -> bytes:
    """RESP bulk strings for command arguments (no array header)."""
    out: list[bytes] = []
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def pack(command: Sequence[bytes | str | int]) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(command) + pack_args(command)


def intake_client(settings: Settings) -> aioredis.Redis:
    """Async Redis client of the receiver: no automatic retries (the intake answers 503 instead and the
    Lua script makes a re-delivery safe), socket timeouts no longer than the intake timeout, and a
    bounded pool that makes callers wait (within the timeout) rather than fail when it is exhausted."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    timeout = min(settings.redis_timeout_seconds, settings.bridge_intake_timeout_seconds)
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "protocol": 2,  # plain replies only: no RESP3 push messages on the raw intake reads
    }
    if is_sentinel_url(url):
        # Sentinel resolves the master on connect (and again after a failover).
        return async_redis_from_url(url, settings=settings, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=timeout, **connection_kwargs(url, settings, **options)
    )
    return aioredis.Redis(connection_pool=pool)


class Intake:
    """``enqueue()``: write a dedupe key and an RQ job atomically, sharing round trips with other requests.

    Also the extension point for other receiver endpoints (``receiver.endpoints.commands``) that enqueue
    jobs
    idempotently: ``await request.app.state.intake.enqueue(job_id, "pkg.module.func", payload, ...)``.
    """

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        recorder: JobRecorder | None = None,
        scripts: Sequence[JobScript] = (),
    ) -> None:
        self.client = client
        self.recorder = recorder or JobRecorder(settings.bridge_queue)
        self._sources: list[str] = []
        self.committer = GroupCommitter(
            client,
            timeout=settings.bridge_intake_timeout_seconds,
            max_batch=settings.bridge_intake_max_batch,
            max_in_flight=settings.bridge_intake_max_in_flight,
            scripts=self._sources,
            batched=settings.bridge_intake_group_commit,
        )
        self.queue_key = self.recorder.queue.key
        self._scripts: dict[str, JobScript] = {}
        self._prefixes: dict[str, bytes] = {}
        self._middles: dict[str, bytes] = {}
        for script in scripts:
            self._scripts[script.func] = script
            self._sources.append(script.source)
        self._ttl = str(settings.bridge_dedupe_ttl_seconds).encode()

    def script(self, func: str) -> JobScript:
        """The job script of ``func`` (built and verified against RQ on first use)."""
        script = self._scripts.get(func)
        if script is None:
            script = self._scripts[func] = self.recorder.script(func)
            self._sources.append(script.source)
        return script

    async def start(self) -> None:
        self.committer.start()
        try:  # best effort: Redis may be down at start-up; NOSCRIPT is handled per batch anyway
            async with asyncio.timeout(self.committer.timeout):
                for source in self._sources:
                    await self.client.script_load(source)
        except Exception:  # noqa: S110
            pass

    async def stop(self) -> None:
        await self.committer.stop()

    async def enqueue(
        self, job_id: str, func: str, payload: Mapping[str, Any], *, description: str, stamp: str
    ) -> bool:
        """True when the job was written, False when ``job_id`` was seen within the dedupe TTL.
        ``stamp`` (``rqjob.utc_stamp()``) is the job's created_at/enqueued_at and the dedupe value.
        Raises ``IntakeUnavailable`` when Redis did not confirm either way."""
        script = self.script(func)
        prefix = self._prefixes.get(func)
        if prefix is None:
            argc = 3 + 2 + len(script.static_keys) + 7
            prefix = b"*%d\r\n" % argc + pack_args(["EVALSHA", script.sha, 2 + len(script.static_keys)])
            self._prefixes[func] = prefix
            self._middles[func] = pack_args([*script.static_keys, self._ttl])
        # KEYS: dedupe, job key, static keys; ARGV: ttl, stamp, job id, created_at, enqueued_at, data,
        # description (see receiver.intake.rqjob). Formatted in one go: this is the hot path.
        job = job_id.encode()
        dedupe = keys.dedupe(job_id).encode()
        job_key = JOB_KEY_PREFIX.encode() + job
        when = stamp.encode()
        data = script.data(payload)
        text = description.encode()
        command = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            prefix,
            len(dedupe),
            dedupe,
            len(job_key),
            job_key,
            self._middles[func],
            len(when),
            when,
            len(job),
            job,
            len(when),
            when,
        ) + b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(when), when, len(data), data, len(text), text)
        result = await self.committer.submit_packed(command)
        return bool(result == 1)

    async def call(self, *command: Any) -> Any:
        """Any other Redis command through the shared pipeline (same timeout and 503 semantics)."""
        return await self.committer.submit(*command)
