"""Every Redis key and channel name the bridge uses, in one place.

All keys share the ``workfloo:`` prefix so an operator can find (and a test can flush) them.
RQ's own keys keep RQ's ``rq:`` prefix.
"""

from __future__ import annotations

PREFIX = "workfloo"


def dedupe(event_id: str) -> str:
    """Receiver: a delivery id already accepted (string with TTL)."""
    return f"{PREFIX}:dedupe:{event_id}"


def execution(execution_id: str) -> str:
    """Workers: hash with one application's state (status, link id, NIP resends, Kompliant ids, outcome)."""
    return f"{PREFIX}:exec:{execution_id}"


def link(link_id: str) -> str:
    """NIP link id → execution id, for NIP callbacks that arrive without an execution id."""
    return f"{PREFIX}:link:{link_id}"


def timeline(execution_id: str) -> str:
    """List of one application's event envelopes (JSON) in publish order."""
    return f"{PREFIX}:timeline:{execution_id}"


def event_once(once_key: str) -> str:
    """Publisher: an effect event already appended (makes retried jobs publish once)."""
    return f"{PREFIX}:once:{once_key}"


def channel(event_type: str) -> str:
    """Pub/sub channel for live listeners of one event type."""
    return f"{PREFIX}:events:{event_type}"


OPEN_EXECUTIONS = f"{PREFIX}:open"
"""Sorted set: execution id → time it was last touched, for executions with no terminal event yet."""

DEAD_LETTER_STREAM = f"{PREFIX}:events:dead"
"""Stream of entries a consumer group gave up on after too many deliveries."""
