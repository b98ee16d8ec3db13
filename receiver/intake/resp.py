"""RESP framing and one pipelined round trip on a pooled redis-py connection.

redis-py does the connecting (auth, db, TLS, sentinel); the bytes of a round trip go through one of two
transports (``BRIDGE_INTAKE_TRANSPORT``): ``stream`` writes and reads the connection's asyncio streams
directly (no per-reply bookkeeping: the fastest), ``redis-py`` uses its public ``send_packed_command`` and
``read_response``. Both return error replies as exception values instead of raising them, so one bad
command fails only its own caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from workers.core.redis_client import async_redis_from_url, connection_kwargs, is_sentinel_url
from workers.core.settings import Settings


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def pack_args(args: Iterable[bytes | str | int]) -> bytes:
    """RESP bulk strings for command arguments (no array header)."""
    out: list[bytes] = []
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(bulk(arg))
    return b"".join(out)


def pack(command: Sequence[bytes | str | int]) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(command) + pack_args(command)


async def read_reply(reader: asyncio.StreamReader) -> Any:
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
        return None if count < 0 else [await read_reply(reader) for _ in range(count)]
    if kind == b"#":
        return body == b"t"
    if kind in (b"-", b"!"):
        if kind == b"!":
            body = (await reader.readexactly(int(body) + 2))[:-2]
        message = body.decode(errors="replace")
        return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
    raise ResponseError(f"unexpected reply type {kind!r} for an intake command")


# Send ``payload`` (``count`` packed commands) on a connected connection and read ``count`` replies.
Exchange = Callable[[AbstractConnection, bytes, int], Awaitable[list[Any]]]


async def redis_py_exchange(connection: AbstractConnection, payload: bytes, count: int) -> list[Any]:
    """Through redis-py's public connection calls."""
    await connection.send_packed_command(payload, check_health=False)
    results: list[Any] = []
    for _ in range(count):
        try:
            results.append(await connection.read_response())
        except ResponseError as exc:
            results.append(exc)
    return results


async def stream_exchange(connection: AbstractConnection, payload: bytes, count: int) -> list[Any]:
    """Straight on the connection's asyncio streams; redis-py's calls when it does not expose them."""
    reader = getattr(connection, "_reader", None)
    writer = getattr(connection, "_writer", None)
    if not (isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)):
        return await redis_py_exchange(connection, payload, count)  # pragma: no cover - other internals
    writer.write(payload)
    await writer.drain()
    return [await read_reply(reader) for _ in range(count)]


TRANSPORTS: Final[dict[str, Exchange]] = {"stream": stream_exchange, "redis-py": redis_py_exchange}


class Wire:
    """All commands in one write, then one reply each, on one pooled connection: a non-transactional
    pipeline without redis-py's per-pipeline bookkeeping. A connection that fails or is cancelled
    mid-way is closed, never handed back with unread replies."""

    def __init__(self, client: aioredis.Redis, transport: str = "stream") -> None:
        self._pool = client.connection_pool
        self._exchange = TRANSPORTS[transport]

    async def round_trip(self, commands: list[bytes]) -> list[Any]:
        pool = self._pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if not connection.is_connected:
                await connection.connect()
            return await self._exchange(connection, b"".join(commands), len(commands))
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)


def intake_client(settings: Settings) -> aioredis.Redis:
    """Async Redis client of the receiver: no automatic retries (the intake answers 503 instead and the
    Lua script makes a re-delivery safe), socket timeouts no longer than the intake timeout, and a
    bounded pool that makes callers wait (within the timeout) rather than fail when it is exhausted."""
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
