"""Consumer-group helper for services reading the bridge's durable event stream.

Delivery is **at-least-once**: an entry is acknowledged (``XACK``) only after the handler returned, so a
consumer that dies mid-handler leaves it pending; another consumer of the group (or the same one after
a restart) claims it with ``XAUTOCLAIM`` once it has been idle for ``claim_idle_ms`` and runs the handler
again. Handlers must therefore be idempotent; the event ``id`` is the idempotency key.

An entry whose delivery count (``XPENDING``) exceeds ``max_deliveries`` is copied to the dead-letter
stream (``DEAD_LETTER_STREAM``, with the original id, group and reason) and acknowledged, so one
poison entry cannot block a group forever. Entries whose type matches none of ``types`` are
acknowledged without calling the handler.

An entry deleted from the stream while pending (``XAUTOCLAIM`` returns its id among the deleted ones:
trimmed past the bridge's hard cap, erased) goes to the dead-letter stream too, with reason
``deleted_unacked``, and is counted in ``trimmed_unacked_key(stream)``: it is never acknowledged silently.
``ensure_group`` records the group's dead-letter stream in ``groups_key(stream)``, where the bridge's
retention job reports the entries it had to trim before the group acknowledged them.

Depends only on redis-py. The bridge's own ``workers.fanout.consumer.Consumer`` is this class with the
bridge's settings as defaults and its structured logs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Generic, TypeVar

import redis

from workfloo_bridge_consumer.envelope import Event

EVENTS_STREAM = "workfloo:events"
"""The bridge's stream (its ``BRIDGE_EVENTS_STREAM`` setting)."""
DEAD_LETTER_STREAM = "workfloo:events:dead"
"""Where entries a group gave up on are copied."""
CLAIM_IDLE_MS = 60_000
MAX_DELIVERIES = 5
BLOCK_MS = 5_000
DEAD_LETTER_MAXLEN = 1_000_000


def groups_key(stream: str) -> str:
    """Hash: consumer group → its dead-letter stream (the bridge's ``keys.stream_groups``)."""
    return f"{stream}:groups"


def trimmed_unacked_key(stream: str) -> str:
    """Hash: consumer group → entries it never acknowledged that were trimmed or deleted
    (the bridge's ``keys.stream_trimmed_unacked``)."""
    return f"{stream}:trimmed_unacked"


E = TypeVar("E")
Entry = tuple[bytes, dict[bytes, bytes] | None]

_log = logging.getLogger("workfloo_bridge_consumer")


def matches(patterns: Sequence[str] | None, event_type: str) -> bool:
    """True when ``event_type`` matches one of the shell-style patterns (``nip.*``); no patterns = all."""
    if not patterns:
        return True
    return any(fnmatchcase(event_type, pattern) for pattern in patterns)


@dataclass
class ConsumerStats:
    """Counters since the consumer was created (tests and logs)."""

    handled: int = 0
    filtered: int = 0
    failed: int = 0
    claimed: int = 0
    dead_lettered: int = 0
    deleted: int = 0


class GroupConsumer(Generic[E]):
    """Reads one stream as member ``name`` of consumer group ``group`` and calls ``handler`` per event,
    each entry's ``event`` field parsed by ``parse`` (an exception there dead-letters the entry)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        group: str,
        name: str,
        handler: Callable[[E], object],
        types: Sequence[str] | None = None,
        *,
        parse: Callable[[bytes], E],
        stream: str = EVENTS_STREAM,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        max_deliveries: int = MAX_DELIVERIES,
        block_ms: int = BLOCK_MS,
        count: int = 100,
        start_id: str = "$",
        claim_interval_ms: int | None = None,
        dead_letter_stream: str = DEAD_LETTER_STREAM,
        dead_letter_maxlen: int = DEAD_LETTER_MAXLEN,
    ) -> None:
        """``start_id``: where a new group starts, ``$`` (only new events) or ``0`` (the whole stream).

        ``claim_interval_ms``: how often to look for idle entries (default: half of ``claim_idle_ms``).
        """
        self.redis = redis_client
        self.group = group
        self.name = name
        self.handler = handler
        self.parse = parse
        self.types = list(types) if types else None
        self.stream = stream
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.block_ms = _bounded_block(redis_client, block_ms)
        self.count = count
        self.start_id = start_id
        self.claim_interval_s = (
            claim_interval_ms if claim_interval_ms is not None else self.claim_idle_ms // 2
        ) / 1000
        self.dead_letter_stream = dead_letter_stream
        self.dead_letter_maxlen = dead_letter_maxlen
        self.stats = ConsumerStats()
        self._group_ready = False
        self._last_claim = float("-inf")

    # --- public API ------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; an existing group keeps its position."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.redis.hset(groups_key(self.stream), self.group, self.dead_letter_stream)
        self._group_ready = True

    def run_once(self, block: bool = True) -> int:
        """Claim idle entries when due, then read new ones (blocking up to ``block_ms``); returns how many
        entries were processed (handled, filtered or dead-lettered)."""
        if not self._group_ready:
            self.ensure_group()
        try:
            processed = self._claim_if_due()
            entries = self._read_new(block=block and processed == 0)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # the group or stream was deleted: recreate on the next call
            return 0
        for entry_id, fields in entries:
            self._process(entry_id, fields, deliveries=1)
        return processed + len(entries)

    def run(self, stop_event: threading.Event) -> None:
        """Loop until ``stop_event`` is set; a Redis outage is logged and retried with a short back-off."""
        backoff = 0.1
        while not stop_event.is_set():
            try:
                self.run_once()
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.log("consumer_redis_unavailable", group=self.group, error=type(exc).__name__)
                stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def log(self, event: str, **fields: Any) -> None:
        """One warning: the event name and its fields (never an event's data). Override to route it."""
        _log.warning("%s %s", event, " ".join(f"{key}={value}" for key, value in fields.items()))

    # --- internals -------------------------------------------------------------------------------

    def _read_new(self, block: bool) -> list[Entry]:
        reply: Any = self.redis.xreadgroup(
            self.group,
            self.name,
            {self.stream: ">"},
            count=self.count,
            block=self.block_ms if block else None,
        )
        if not reply:
            return []
        entries: list[Entry] = reply[0][1]
        return entries

    def _claim_if_due(self) -> int:
        now = time.monotonic()
        if now - self._last_claim < self.claim_interval_s:
            return 0
        self._last_claim = now
        reply: Any = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.count,
        )
        entries: list[Entry] = [(eid, fields) for eid, fields in reply[1] if eid is not None]
        deleted: list[bytes] = list(reply[2]) if len(reply) > 2 else []  # Redis 7: gone from the stream
        for entry_id in deleted:
            self._dead_letter_deleted(entry_id)
        if not entries:
            return len(deleted)
        self.stats.claimed += len(entries)
        counts = self._delivery_counts([eid for eid, _ in entries])
        for entry_id, fields in entries:
            self._process(entry_id, fields, deliveries=counts[entry_id])
        return len(entries) + len(deleted)

    def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        rows: Any = self.redis.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 100, consumername=self.name
        )
        counts = {_as_bytes(row["message_id"]): int(row["times_delivered"]) for row in rows}
        for entry_id in ids:  # more of this consumer's entries in the range than asked for: look up alone
            if entry_id not in counts:
                one: Any = self.redis.xpending_range(
                    self.stream, self.group, min=entry_id, max=entry_id, count=1, consumername=self.name
                )
                counts[entry_id] = int(one[0]["times_delivered"]) if one else 1
        return counts

    def _process(self, entry_id: bytes, fields: dict[bytes, bytes] | None, deliveries: int) -> None:
        if not fields:  # Redis < 7 claims an entry deleted while pending as an empty one
            self._dead_letter_deleted(entry_id)
            return
        event_type = fields.get(b"type", b"").decode()
        if not matches(self.types, event_type):
            self.redis.xack(self.stream, self.group, entry_id)
            self.stats.filtered += 1
            return
        if deliveries > self.max_deliveries:
            self._dead_letter(entry_id, fields, f"delivered {deliveries - 1} times without ack", deliveries)
            return
        try:
            event = self.parse(fields[b"event"])
        except Exception:  # a malformed entry will never parse: retrying cannot help
            self._dead_letter(entry_id, fields, "unparseable envelope", deliveries)
            return
        try:
            self.handler(event)
        except Exception as exc:
            self.stats.failed += 1
            self.log(
                "consumer_handler_failed",
                group=self.group,
                consumer=self.name,
                entry_id=entry_id.decode(),
                event_type=event_type,
                deliveries=deliveries,
                error=type(exc).__name__,
            )
            return  # left pending: claimed again after claim_idle_ms
        self.redis.xack(self.stream, self.group, entry_id)
        self.stats.handled += 1

    def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str, deliveries: int) -> None:
        record: dict[Any, Any] = {
            **fields,
            b"original_stream": self.stream,
            b"original_id": entry_id,
            b"group": self.group,
            b"consumer": self.name,
            b"reason": reason,
            b"deliveries": deliveries,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, record, maxlen=self.dead_letter_maxlen, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.stats.dead_lettered += 1
        self.log(
            "consumer_dead_lettered",
            group=self.group,
            entry_id=entry_id.decode(),
            reason=reason,
            deliveries=deliveries,
        )

    def _dead_letter_deleted(self, entry_id: bytes) -> None:
        record: dict[Any, Any] = {
            b"reason": "deleted_unacked",
            b"original_stream": self.stream,
            b"original_id": entry_id,
            b"group": self.group,
            b"consumer": self.name,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, record, maxlen=self.dead_letter_maxlen, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)  # Redis 7 already dropped it from the PEL
        pipe.hincrby(trimmed_unacked_key(self.stream), self.group, 1)
        pipe.execute()
        self.stats.deleted += 1
        self.log("consumer_deleted_unacked", group=self.group, consumer=self.name, entry_id=entry_id.decode())


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _bounded_block(client: redis.Redis, block_ms: int) -> int:
    """Keep BLOCK below the client's socket timeout, else the read would fail with a timeout error."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if timeout:
        return max(1, min(block_ms, int(float(timeout) * 1000 * 0.8)))
    return block_ms


class Consumer(GroupConsumer[Event]):
    """``GroupConsumer`` of the bridge's envelope: ``handler`` gets an ``Event``."""

    def __init__(
        self,
        redis_client: redis.Redis,
        group: str,
        name: str,
        handler: Callable[[Event], object],
        types: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        """``options``: those of ``GroupConsumer`` but ``parse``."""
        super().__init__(redis_client, group, name, handler, types, parse=Event.from_json, **options)
