"""The event envelope shared by the receiver, the workers and every subscriber.

Every event has the same envelope; only ``data`` varies by ``type``. ``id`` identifies the fact: an event
published with a once-key (every effect the bridge reports) takes ``fact_event_id(once_key)``, so the
same fact has the same id however often and however late it is published again; any other event keeps
a fresh ULID. The catalogue of types lives in ``docs/events.md``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

SCHEMA_VERSION = 1


class Source(StrEnum):
    KIBAN = "kiban"
    KOMPLIANT = "kompliant"
    BRIDGE = "bridge"


class EventType(StrEnum):
    CALLBACK_RECEIVED = "callback.received"
    NIP_PENDING = "nip.pending"
    NIP_SENT = "nip.sent"
    NIP_DELIVERED = "nip.delivered"
    NIP_FAILED = "nip.failed"
    NIP_RESENT = "nip.resent"
    NIP_VALIDATED = "nip.validated"
    APPLICATION_STARTED = "application.started"
    APPLICATION_FORGOTTEN = "application.forgotten"
    WORKFLOO_STATUS_CHANGED = "workfloo.status_changed"
    WORKFLOO_COMPLETED = "workfloo.completed"
    WORKFLOO_FAILED = "workfloo.failed"
    WORKFLOO_ABANDONED = "workfloo.abandoned"
    KOMPLIANT_WORKFLOW_CREATED = "kompliant.workflow.created"
    KOMPLIANT_WORKFLOW_STARTED = "kompliant.workflow.started"
    KOMPLIANT_WORKFLOW_REJECTED = "kompliant.workflow.rejected"
    ACTION_FAILED = "action.failed"


def matches(patterns: list[str] | tuple[str, ...] | None, event_type: str) -> bool:
    """True when ``event_type`` matches one of the shell-style patterns (``nip.*``); no patterns = all."""
    if not patterns:
        return True
    return any(fnmatchcase(event_type, pattern) for pattern in patterns)


def new_event_id() -> str:
    return str(ULID())


def fact_event_id(once_key: str) -> str:
    """The id of the fact named by ``once_key``: 128 bits of its SHA-256 in a ULID's 26-character
    Crockford base32, so ids keep one shape. Stable across processes and releases; not time-ordered."""
    digest = hashlib.sha256(b"workfloo-event\n" + once_key.encode()).digest()
    return str(ULID.from_bytes(digest[:16]))


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One thing that happened to one application (or to the bridge)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(default_factory=new_event_id)
    type: str
    occurred_at: datetime = Field(default_factory=utc_now)
    execution_id: str | None = None
    source: Source = Source.BRIDGE
    schema_version: int = SCHEMA_VERSION
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "occurred_at": self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "execution_id": self.execution_id,
                "source": self.source.value,
                "schema_version": self.schema_version,
                "data": self.data,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        return cls.model_validate(orjson.loads(raw))
