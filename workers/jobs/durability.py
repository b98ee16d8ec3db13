"""Make what the bridge wrote to Redis durable before a vendor call that depends on it.

An anchor (the Kompliant subject record and workflow ids of a hand-off, the Kiban execution id of
``start_application``) only prevents a duplicate effect if it survives what Redis can lose: the last writes
of a primary that dies before its replica got them (asynchronous replication, failover), or the last
second of an AOF ``everysec`` host crash. ``ensure`` waits until everything written so far, on any
connection, reached the level ``BRIDGE_DURABILITY`` asks for, or raises ``DurabilityError`` (transient:
the step retries and the vendor is not called).

Two calls: ``target(connection, settings)`` says what will be waited for and why (``check`` shows it);
``ensure(connection, settings, before=...)`` waits for it. The levels and the table per topology are
in docs/operations.md.

``WAIT`` and ``WAITAOF`` count the writes of their own connection only, and a pooled client may have
written the anchor on another one. So the wait runs in one pipeline after a tiny write of its own
(``keys.DURABILITY_PROBE``): replication and the AOF are one ordered stream, and the probe was written
after the anchor's write had been answered, so the probe acknowledged means the anchor is too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from workers.core import keys
from workers.core.errors import DurabilityError
from workers.core.log import get_logger
from workers.core.settings import Settings

log = get_logger(__name__)

WAITAOF_SINCE = (7, 2)
"""The first Redis version with ``WAITAOF``."""


@dataclass(frozen=True)
class Target:
    """What a wait asks of Redis: ``replicas`` for ``WAIT`` (0: none), ``local_fsync`` for
    ``WAITAOF 1 0``, and ``why`` in words an operator can check against ``INFO``."""

    replicas: int
    local_fsync: bool
    why: str
    problem: str | None = None
    """What this server cannot give an explicit level right now (every wait would refuse), else None."""

    @property
    def waits(self) -> bool:
        return self.replicas > 0 or self.local_fsync


@dataclass(frozen=True)
class _Server:
    version: tuple[int, int]
    aof_enabled: bool
    connected_replicas: int

    @property
    def version_text(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def _server(connection: redis.Redis) -> _Server:
    with connection.pipeline(transaction=False) as pipe:
        pipe.info("server")
        pipe.info("persistence")
        pipe.info("replication")
        server, persistence, replication = pipe.execute()
    parts = str(server.get("redis_version", "0.0")).split(".")
    version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    return _Server(
        version=version,
        aof_enabled=bool(int(persistence.get("aof_enabled", 0))),
        connected_replicas=int(replication.get("connected_slaves", 0)),
    )


def _plural(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def target(connection: redis.Redis, settings: Settings) -> Target:
    """What ``ensure`` waits for on this server with these settings (reads ``INFO`` unless ``none``)."""
    return _target(settings, None if settings.bridge_durability == "none" else _server(connection))


def _target(settings: Settings, server: _Server | None) -> Target:
    level = settings.bridge_durability
    if server is None:
        return Target(0, False, "none: nothing is waited for")
    wanted = settings.bridge_durability_replicas
    if level != "auto":
        replicas = wanted if level in ("replica", "replica+aof") else 0
        local = level in ("aof", "replica+aof")
        said = [f"WAIT {replicas}"] if replicas else []
        said += ["WAITAOF 1 0"] if local else []
        problems = []
        if replicas > server.connected_replicas:
            problems.append(f"{server.connected_replicas} of {_plural(replicas)} connected")
        if local and not server.aof_enabled:
            problems.append("AOF is off")
        elif local and server.version < WAITAOF_SINCE:
            problems.append(f"Redis {server.version_text} has no WAITAOF (7.2 or later)")
        return Target(replicas, local, f"{level}: " + " and ".join(said), "; ".join(problems) or None)
    connected = server.connected_replicas
    replicas = min(connected, wanted)
    said = [f"{_plural(connected).replace('replica', 'connected replica')}: WAIT {replicas}"]
    if not replicas:
        said = ["no replica connected"]
    local = server.aof_enabled and server.version >= WAITAOF_SINCE
    if local:
        said.append("AOF on: WAITAOF 1 0")
    elif server.aof_enabled:
        said.append(f"AOF on but Redis {server.version_text} has no WAITAOF: the fsync is not waited for")
    else:
        said.append("AOF off")
    return Target(replicas, local, "auto: " + "; ".join(said))


def wait_ms(settings: Settings) -> int:
    """``BRIDGE_DURABILITY_TIMEOUT_MS``, held below the Redis socket timeout that would cut the wait short
    (a receiver with a short socket timeout never waits, so this is no start-up rule)."""
    return max(1, min(settings.bridge_durability_timeout_ms, int(settings.redis_timeout_seconds * 800)))


def ensure(connection: redis.Redis, settings: Settings, *, before: str = "") -> Target:
    """Wait until every write made so far is durable to ``BRIDGE_DURABILITY``; raise ``DurabilityError``
    (retryable) when Redis does not confirm it within ``BRIDGE_DURABILITY_TIMEOUT_MS``. ``before`` names
    the vendor call that waits, for the log. Returns the target it met."""
    server = None if settings.bridge_durability == "none" else _server(connection)
    goal = _target(settings, server)
    if not goal.waits:
        return goal
    timeout = wait_ms(settings)
    if goal.local_fsync and server is not None and server.version < WAITAOF_SINCE:
        raise _refused(goal, before, "the aof levels need WAITAOF, Redis 7.2 or later")
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.set(keys.DURABILITY_PROBE, "1", ex=keys.DURABILITY_PROBE_TTL_SECONDS)
            if goal.replicas:
                pipe.wait(goal.replicas, timeout)
            if goal.local_fsync:
                pipe.waitaof(1, 0, timeout)
            results: list[Any] = pipe.execute(raise_on_error=False)
    except (redis.TimeoutError, redis.ConnectionError) as exc:
        raise _refused(goal, before, f"Redis did not answer the wait ({type(exc).__name__})") from exc
    for result in results:
        if isinstance(result, redis.ResponseError):  # e.g. WAITAOF on a primary with AOF off
            raise _refused(goal, before, f"Redis refused the wait: {str(result)[:120]}")
    answers = results[1:]
    if goal.replicas:
        acked = int(answers.pop(0))
        if acked < goal.replicas:
            raise _refused(
                goal, before, f"{acked} of {_plural(goal.replicas)} acknowledged within {timeout} ms"
            )
    if goal.local_fsync:
        local = int(answers.pop(0)[0])
        if local < 1:
            raise _refused(goal, before, f"the primary's AOF was not fsynced within {timeout} ms")
    return goal


def _refused(goal: Target, before: str, what: str) -> DurabilityError:
    log.warning("durability_not_reached", before=before, level=goal.why, problem=what)
    return DurabilityError(f"durability not reached before {before or 'a vendor call'}: {what}")
