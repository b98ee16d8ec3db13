"""Group commit: the Redis commands of concurrent requests share one pipelined round trip."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from receiver.intake.resp import Wire, pack
from workers.core.errors import IntakeUnavailableError


class GroupCommitter:
    """Sends the commands of concurrent requests to Redis in one non-transactional pipeline.

    Each caller appends ``(command, future, enqueued_at)``; one flusher task takes everything pending
    (up to ``max_batch``), sends it in one round trip and resolves the futures. While a batch is in
    flight the next one accumulates, so the batch size follows the load. Every failure (connection
    refused, timeout, cancelled read) fails only that batch's futures; the connection that failed is
    dropped (``resp.Wire``) and the next batch reconnects, so an outage never wedges the flusher.
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
        transport: str = "stream",
    ) -> None:
        self._client = client
        self._wire = Wire(client, transport)
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
        self._fail(self._pending, IntakeUnavailableError("receiver shutting down"))
        self._pending = []

    async def submit(self, *command: Any) -> Any:
        """Run one command in the next batch; raises ``IntakeUnavailableError`` when Redis does not
        answer."""
        return await self.submit_packed(pack(command))

    async def submit_packed(self, command: bytes) -> Any:
        """Same as ``submit`` for a command already in RESP (``resp.pack``)."""
        if self._task is None or self._task.done():
            raise IntakeUnavailableError("intake flusher is not running")
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
                item[1].set_exception(IntakeUnavailableError("Redis is slow"))
                continue
            live.append(item)
        if not live:
            return
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._wire.round_trip([item[0] for item in live])
                if self._scripts and any(isinstance(r, NoScriptError) for r in results):
                    # Redis restarted or SCRIPT FLUSH: load and resend only the affected commands.
                    await self.load_scripts()
                    retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                    again = await self._wire.round_trip([live[i][0] for i in retry])
                    for i, result in zip(retry, again, strict=True):
                        results[i] = result
        except asyncio.CancelledError:
            self._fail(live, IntakeUnavailableError("receiver shutting down"))
            raise
        except Exception as exc:  # any Redis/network failure fails this batch only
            self._fail(live, IntakeUnavailableError(type(exc).__name__))
            return
        self.batches += 1
        self.commands += len(live)
        for (_cmd, future, _t), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(IntakeUnavailableError(type(result).__name__))
            else:
                future.set_result(result)

    async def _direct(self, command: bytes) -> Any:
        """One round trip per call on a pooled connection (``bridge_intake_group_commit=false``)."""
        try:
            async with asyncio.timeout(self.timeout):
                (result,) = await self._wire.round_trip([command])
                if isinstance(result, NoScriptError):
                    await self.load_scripts()
                    (result,) = await self._wire.round_trip([command])
        except Exception as exc:
            raise IntakeUnavailableError(type(exc).__name__) from None
        if isinstance(result, Exception):
            raise IntakeUnavailableError(type(result).__name__)
        self.batches += 1
        self.commands += 1
        return result

    async def load_scripts(self) -> None:
        """Load every job script (after a Redis restart or SCRIPT FLUSH dropped them)."""
        for source in self._scripts:
            await self._client.script_load(source)

    @staticmethod
    def _fail(items: list[tuple[bytes, asyncio.Future[Any], float]], exc: Exception) -> None:
        for _cmd, future, _t in items:
            if not future.done():
                future.set_exception(exc)
