"""Read the events of workfloo-bridge from its Redis stream with a consumer group.

``Consumer`` delivers each event at least once to your handler (acknowledged only after it returned,
claimed again when its consumer died, dead-lettered after too many deliveries); ``Event`` is the
envelope; ``events`` has ``EventType`` and a ``TypedDict`` per type's ``data``. The contract:
``docs/events.md``, ``docs/schemas/events/`` and ``docs/asyncapi.yaml`` in the bridge's repository.
"""

from workfloo_bridge_consumer.envelope import EnvelopeError, Event
from workfloo_bridge_consumer.events import *  # noqa: F403 - the typed events are this package's API
from workfloo_bridge_consumer.events import __all__ as _events_all
from workfloo_bridge_consumer.group import (
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    Consumer,
    ConsumerStats,
    GroupConsumer,
    matches,
)

__all__ = [
    "DEAD_LETTER_STREAM",
    "EVENTS_STREAM",
    "Consumer",
    "ConsumerStats",
    "EnvelopeError",
    "Event",
    "GroupConsumer",
    "matches",
    *_events_all,
]
