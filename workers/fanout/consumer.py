"""Consumer-group helper for internal services reading the durable event stream.

The code is the consumer package's (``consumer/``, distribution ``workfloo-bridge-consumer``, which
subscribers install without the bridge): ``GroupConsumer`` there holds the whole delivery logic, and this
``Consumer`` runs it with the bridge's settings as defaults, the bridge's ``Event`` model and its
structured logs. One copy, so the two cannot drift.

Delivery is **at-least-once**: an entry is acknowledged (``XACK``) only after the handler returned, so a
consumer that dies mid-handler leaves it pending; another consumer of the group (or the same one after
a restart) claims it with ``XAUTOCLAIM`` once it has been idle for ``claim_idle_ms`` and runs the handler
again. Handlers must therefore be idempotent; the event ``id`` is the idempotency key.

An entry whose delivery count (``XPENDING``) exceeds ``max_deliveries`` is copied to the dead-letter
stream (``keys.DEAD_LETTER_STREAM``, with the original id, group and reason) and acknowledged, so one
poison entry cannot block a group forever. Entries whose type matches none of ``types`` are
acknowledged without calling the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from workfloo_bridge_consumer.group import ConsumerStats, GroupConsumer

from workers.core import keys
from workers.core.events import Event
from workers.core.log import get_logger
from workers.core.settings import Settings, get_settings

log = get_logger(__name__)

Handler = Callable[[Event], object]


class Consumer(GroupConsumer[Event]):
    """Reads one stream as member ``name`` of consumer group ``group`` and calls ``handler`` per event."""

    def __init__(
        self,
        redis_client: redis.Redis,
        group: str,
        name: str,
        handler: Handler,
        types: Sequence[str] | None = None,
        *,
        stream: str | None = None,
        claim_idle_ms: int | None = None,
        max_deliveries: int | None = None,
        block_ms: int | None = None,
        count: int = 100,
        start_id: str = "$",
        claim_interval_ms: int | None = None,
        dead_letter_stream: str = keys.DEAD_LETTER_STREAM,
        settings: Settings | None = None,
    ) -> None:
        """``start_id``: where a new group starts, ``$`` (only new events) or ``0`` (the whole stream).

        ``claim_interval_ms``: how often to look for idle entries (default: half of ``claim_idle_ms``).
        Unset options come from the settings (``EVENTS_*``).
        """
        settings = settings or get_settings()
        super().__init__(
            redis_client,
            group,
            name,
            handler,
            types,
            parse=Event.from_json,
            stream=stream or settings.events_stream,
            claim_idle_ms=claim_idle_ms if claim_idle_ms is not None else settings.events_claim_idle_ms,
            max_deliveries=max_deliveries if max_deliveries is not None else settings.events_max_deliveries,
            block_ms=block_ms if block_ms is not None else settings.events_block_ms,
            count=count,
            start_id=start_id,
            claim_interval_ms=claim_interval_ms,
            dead_letter_stream=dead_letter_stream,
            dead_letter_maxlen=settings.events_stream_maxlen,
        )

    def log(self, event: str, **fields: Any) -> None:
        log.warning(event, **fields)


__all__ = ["Consumer", "ConsumerStats", "Handler"]
