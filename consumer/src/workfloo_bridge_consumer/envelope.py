"""The event envelope as a subscriber reads it: the same fields as the bridge publishes, no pydantic."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class EnvelopeError(ValueError):
    """The entry is not an event envelope (a consumer dead-letters it at once: it will never parse)."""


@dataclass(frozen=True)
class Event:
    """One thing that happened to one application (or to the bridge).

    ``id`` is a ULID and the idempotency key; ``data`` varies by ``type`` (``workfloo_bridge_consumer.events``
    has a ``TypedDict`` per type). Unknown envelope fields are ignored, as the contract asks.
    """

    id: str
    type: str
    occurred_at: datetime
    execution_id: str | None = None
    source: str = "bridge"
    schema_version: int = 1
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        try:
            envelope = json.loads(raw)
            return cls(
                id=str(envelope["id"]),
                type=str(envelope["type"]),
                occurred_at=datetime.fromisoformat(str(envelope["occurred_at"])),
                execution_id=envelope.get("execution_id"),
                source=str(envelope.get("source", "bridge")),
                schema_version=int(envelope.get("schema_version", 1)),
                data=dict(envelope.get("data") or {}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvelopeError(f"not an event envelope: {type(exc).__name__}") from exc
