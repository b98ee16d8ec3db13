"""The consumers' dead-letter stream (``keys.DEAD_LETTER_STREAM``): listed and replayed for operators.

A consumer group copies there an entry it gave up on (delivered ``BRIDGE_EVENTS_MAX_DELIVERIES`` times,
or an envelope that does not parse) with ``original_stream``, ``original_id``, ``group``, ``consumer``,
``reason`` and ``deliveries``; an entry deleted while pending is recorded with ``reason=deleted_unacked``
and no event. Listing shows those fields, the event type and the execution id, never the envelope.

Replay appends the entry's event to its original stream again (fields ``type``, ``execution_id``,
``event``, as the publisher writes them) and deletes it from the dead-letter stream, in one
transaction. The stream has no per-group delivery, so every group reads the replayed entry; the
envelope keeps its event ``id``, so the idempotent handlers the consumer contract asks for skip it in
the groups that had handled it. A ``deleted_unacked`` record holds no event and cannot be replayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from workers.core import keys
from workers.core.settings import Settings

_BATCH = 500
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True)
class DeadEvent:
    entry_id: str
    original_stream: str | None
    original_id: str | None
    group: str | None
    consumer: str | None
    reason: str | None
    deliveries: int | None
    type: str | None
    execution_id: str | None
    replayable: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return value.decode(errors="replace") if value else None


def _dead_event(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadEvent:
    deliveries = _text(fields, b"deliveries")
    return DeadEvent(
        entry_id=entry_id.decode(),
        original_stream=_text(fields, b"original_stream"),
        original_id=_text(fields, b"original_id"),
        group=_text(fields, b"group"),
        consumer=_text(fields, b"consumer"),
        reason=_text(fields, b"reason"),
        deliveries=int(deliveries) if deliveries and deliveries.isdigit() else None,
        type=_text(fields, b"type"),
        execution_id=_text(fields, b"execution_id"),
        replayable=b"event" in fields and b"original_stream" in fields,
    )


def list_dead_events(
    connection: redis.Redis, *, count: int = 100, stream: str = keys.DEAD_LETTER_STREAM
) -> list[DeadEvent]:
    """The ``count`` most recent entries, oldest first."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], connection.xrevrange(stream, count=count))
    return [_dead_event(entry_id, fields) for entry_id, fields in reversed(entries)]


def replay(
    connection: redis.Redis, settings: Settings, entry_id: str, *, stream: str = keys.DEAD_LETTER_STREAM
) -> str:
    """Append the event of dead entry ``entry_id`` to its original stream again and delete the dead
    entry; returns the new stream id. ``LookupError`` when there is no such entry or it holds no event."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], connection.xrange(stream, entry_id, entry_id))
    if not entries:
        raise LookupError(f"{entry_id} is not in {stream}")
    fields = entries[0][1]
    original = fields.get(b"original_stream")
    if b"event" not in fields or not original:
        raise LookupError(f"{entry_id} holds no event to replay (reason {_text(fields, b'reason')})")
    with connection.pipeline(transaction=True) as pipe:
        pipe.xadd(
            original.decode(),
            {
                "type": fields.get(b"type", b""),
                "execution_id": fields.get(b"execution_id", b""),
                "event": fields[b"event"],
            },
            maxlen=settings.events_stream_bound,
            approximate=True,
        )
        pipe.xdel(stream, entry_id)
        new_id, deleted = pipe.execute()
    if not deleted:  # replayed concurrently: the other replay's entry stands, drop ours
        connection.xdel(original.decode(), new_id)
        raise LookupError(f"{entry_id} was already replayed")
    return cast(bytes, new_id).decode()


def replay_all(
    connection: redis.Redis, settings: Settings, *, stream: str = keys.DEAD_LETTER_STREAM
) -> list[str]:
    """Replay every replayable entry; returns the dead entry ids replayed."""
    done: list[str] = []
    cursor = "-"
    while True:
        batch = cast(
            list[tuple[bytes, dict[bytes, bytes]]], connection.xrange(stream, cursor, "+", count=_BATCH)
        )
        for entry_id, fields in batch:
            if b"event" not in fields:
                continue
            try:
                replay(connection, settings, entry_id.decode(), stream=stream)
            except LookupError:
                continue
            done.append(entry_id.decode())
        if len(batch) < _BATCH:
            return done
        cursor = "(" + batch[-1][0].decode()
