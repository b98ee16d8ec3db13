"""Fan-out of bridge events: one atomic Redis step appends to the stream, the timeline and pub/sub.

``Publisher.publish`` is one Lua script call:

1. ``once_key`` given and already seen → renew the once-key's TTL, return False, no other effect (a
   retried or replayed job publishes once);
2. ``HSET`` the caller's state fields (the state hash's TTL set to ``bridge_execution_retention_seconds``
   unless it was already terminal: the retention rule of ``workers.jobs.state``);
3. ``XADD`` the stream (``MAXLEN ~``), fields ``type``, ``execution_id``, ``event`` (envelope JSON);
4. ``RPUSH`` the envelope on the execution's timeline (TTL ``events_timeline_ttl_seconds``);
5. enqueue one RQ delivery job per matching, not-disabled HTTP subscriber (the job hash is built by
   RQ's own ``Job.to_dict`` in Python; the script only stores it and pushes its id);
6. ``PUBLISH`` on ``workfloo:events:<type>`` (live listeners, at-most-once);
7. remember ``once_key`` (TTL ``Settings.event_once_ttl_seconds``), last of all.

An event published with a ``once_key`` gets the id ``fact_event_id(once_key)`` (whatever id the caller's
``Event`` carried), so a fact published again, after its once-key expired or after a script that failed
half-way, carries the same ``id`` and consumers dedupe it. Redis does not roll a script back: a command
failing half-way (only possible with a key of the wrong type) keeps the steps before it, and because the
once-key comes last the caller's retry publishes the event again instead of losing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from workers.core import keys, tracing
from workers.core.events import Event, fact_event_id
from workers.core.settings import Settings
from workers.fanout.webhooks import PreparedDelivery, prepare_deliveries

# KEYS: 1 once, 2 state, 3 stream, 4 timeline, 5 channel, 6 rq:queues, 7 rq queue,
#       then per delivery: disabled flag, job hash.
# ARGV: 1 once ttl, 2 maxlen, 3 type, 4 execution id, 5 envelope, 6 timeline ttl, 7 state ttl,
#       8 number of state fields (n), then n field/value pairs,
#       then number of deliveries (d), then per delivery: job id, number of hash fields (m), m pairs.
_PUBLISH_LUA = """
local has_once = KEYS[1] ~= ''
if has_once and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 0
end
local i = 8
local nstate = tonumber(ARGV[i])
i = i + 1
if nstate > 0 and KEYS[2] ~= '' then
  local state = {}
  for j = 1, nstate * 2 do state[j] = ARGV[i + j - 1] end
  local finished = redis.call('HGET', KEYS[2], 'terminal') == '1' and redis.call('TTL', KEYS[2]) > 0
  redis.call('HSET', KEYS[2], unpack(state))
  if not finished then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
end
i = i + nstate * 2
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
  'type', ARGV[3], 'execution_id', ARGV[4], 'event', ARGV[5])
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
local ndeliveries = tonumber(ARGV[i])
i = i + 1
local k = 8
for d = 1, ndeliveries do
  local job_id = ARGV[i]
  local nfields = tonumber(ARGV[i + 1])
  i = i + 2
  if redis.call('EXISTS', KEYS[k]) == 0 then
    local mapping = {}
    for j = 1, nfields * 2 do mapping[j] = ARGV[i + j - 1] end
    redis.call('HSET', KEYS[k + 1], unpack(mapping))
    redis.call('RPUSH', KEYS[7], job_id)
    redis.call('SADD', KEYS[6], KEYS[7])
  end
  i = i + nfields * 2
  k = k + 2
end
redis.call('PUBLISH', KEYS[5], ARGV[5])
if has_once then
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class PublishItem:
    """One event for ``publish_many`` with the same options ``publish`` takes."""

    event: Event
    once_key: str | None = None
    state_key: str | None = None
    state_fields: Mapping[str, str] | None = None


class Publisher:
    """Appends events to the durable stream and fans them out (see the module docstring)."""

    def __init__(self, redis_client: redis.Redis, settings: Settings) -> None:
        self.redis = redis_client
        self.settings = settings
        self._script = redis_client.register_script(_PUBLISH_LUA)

    def publish(
        self,
        event: Event,
        *,
        once_key: str | None = None,
        state_key: str | None = None,
        state_fields: Mapping[str, str] | None = None,
    ) -> bool:
        """Publish ``event`` (with the id ``fact_event_id(once_key)`` when ``once_key`` is given); False,
        and no effect but the once-key's renewed TTL, when ``once_key`` was already published."""
        if not tracing.active():
            keys_, args = self._call_args(event, once_key, state_key, state_fields)
            return bool(self._script(keys=keys_, args=args))
        attributes = {
            "workfloo.event_type": str(event.type),
            "workfloo.execution_id": event.execution_id or "",
        }
        with tracing.span(
            f"publish {event.type}", kind=tracing.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            keys_, args = self._call_args(event, once_key, state_key, state_fields)
            published = bool(self._script(keys=keys_, args=args))
            if span is not None:
                span.set_attribute("workfloo.published", published)  # False: already published once
            return published

    def publish_many(self, items: Iterable[PublishItem | Event]) -> list[bool]:
        """Publish several events in one round trip (each one still atomic on its own, in order)."""
        with tracing.span("publish batch", kind=tracing.SpanKind.PRODUCER):
            return self._publish_many(items)

    def _publish_many(self, items: Iterable[PublishItem | Event]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for item in items:
            entry = item if isinstance(item, PublishItem) else PublishItem(item)
            keys_, args = self._call_args(entry.event, entry.once_key, entry.state_key, entry.state_fields)
            self._script(keys=keys_, args=args, client=pipe)
            count += 1
        if count == 0:
            return []
        return [bool(result) for result in pipe.execute()]

    def timeline(self, execution_id: str, *, start: int = 0, end: int = -1) -> list[Event]:
        """The events of one execution in publish order (``start``/``end`` as in ``LRANGE``)."""
        raw: list[bytes] = self.redis.lrange(keys.timeline(execution_id), start, end)  # type: ignore[assignment]
        return [Event.from_json(item) for item in raw]

    def _call_args(
        self,
        event: Event,
        once_key: str | None,
        state_key: str | None,
        state_fields: Mapping[str, str] | None,
    ) -> tuple[list[str], list[Any]]:
        settings = self.settings
        if once_key:
            event = event.model_copy(update={"id": fact_event_id(once_key)})
        envelope = event.to_json()
        deliveries: Sequence[PreparedDelivery] = prepare_deliveries(self.redis, settings, event, envelope)
        fields = dict(state_fields or {})
        if fields and not state_key:
            raise ValueError("state_fields need a state_key")
        keys_: list[str] = [
            keys.event_once(once_key) if once_key else "",
            state_key or "",
            settings.events_stream,
            keys.timeline(event.execution_id) if event.execution_id else "",
            keys.channel(event.type),
            deliveries[0].queues_key if deliveries else "",
            deliveries[0].queue_key if deliveries else "",
        ]
        args: list[Any] = [
            settings.event_once_ttl_seconds,
            settings.events_stream_bound,
            event.type,
            event.execution_id or "",
            envelope,
            settings.events_timeline_ttl_seconds,
            settings.bridge_execution_retention_seconds,
            len(fields),
        ]
        for name, value in fields.items():
            args.extend((name, value))
        args.append(len(deliveries))
        for delivery in deliveries:
            keys_.extend((delivery.disabled_key, delivery.job_key))
            args.extend((delivery.job_id, len(delivery.mapping)))
            for name, value in delivery.mapping.items():
                args.extend((name, value))
        return keys_, args
