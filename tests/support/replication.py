"""A primary and a replica ``redis-server`` with a delayed replication link, for the failover tests.

``LatencyProxy`` is a loopback TCP proxy that delays every byte by a fixed latency, each way, keeping
order. Put between a replica and its primary, it makes asynchronous replication visibly asynchronous: a
write acknowledged by the primary reaches the replica ``latency`` seconds later, so a primary killed
right after a write takes that write with it. It runs its own asyncio loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import redis

from workers.sandbox.redis_server import RedisServer
from workers.sandbox.wait import wait_until

_CHUNK = 65536


class LatencyProxy:
    """``with LatencyProxy(target_port, latency=0.5) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, target_port: int, latency: float, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency = latency
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)

    def start(self) -> LatencyProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(timeout=5)
        return self

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        with contextlib.suppress(asyncio.CancelledError):  # the proxy is closing
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        for each in (writer, up_writer):
            self._writers.discard(each)
            each.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                queue.put_nowait((time.monotonic() + self.latency, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wait_for_replica_link(replica: redis.Redis, timeout: float = 10.0) -> None:
    """Poll a replica's ``INFO replication`` until its link to the primary is up."""
    wait_until(
        lambda: replica.info("replication").get("master_link_status") == "up",
        timeout=timeout,
        what="the replica's link to its primary",
    )


@dataclass
class Pair:
    """A primary, its replica, and the proxy the replica reaches the primary through."""

    primary: RedisServer
    replica: RedisServer
    proxy: LatencyProxy

    @staticmethod
    def client(server: RedisServer) -> redis.Redis:
        return redis.Redis.from_url(server.url)

    def fail_over(self) -> redis.Redis:
        """SIGKILL the primary, promote the replica (``REPLICAOF NO ONE``), return a client of it."""
        self.primary.stop(kill=True)
        promoted = self.client(self.replica)
        promoted.execute_command("REPLICAOF", "NO", "ONE")
        return promoted


def replicated_pair(latency: float) -> Iterator[Pair]:
    """A primary and a replica linked through a ``LatencyProxy``, the link up (for fixtures)."""
    with RedisServer() as primary, LatencyProxy(primary.port, latency) as proxy:
        # Redis waits 5 s for more replicas before a diskless full sync; one replica is all there is.
        redis.Redis.from_url(primary.url).config_set("repl-diskless-sync-delay", 0)
        with RedisServer(replicaof=("127.0.0.1", proxy.port)) as replica:
            wait_for_replica_link(redis.Redis.from_url(replica.url))
            yield Pair(primary, replica, proxy)
