"""What ``status`` reports, as one plain document: the CLI renders it or prints it as JSON."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import redis

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import Settings


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def collect_status(client: redis.Redis, settings: Settings, recent: int = 10) -> dict[str, Any]:
    """Queue depths, started/failed jobs, workers, the event stream and per-consumer-group lag."""
    from rq import Queue, Worker
    from rq.registry import (
        DeferredJobRegistry,
        FailedJobRegistry,
        FinishedJobRegistry,
        ScheduledJobRegistry,
        StartedJobRegistry,
    )

    # The HTTP subscribers' delivery queue is their lag: deliveries waiting, retrying (scheduled), failed.
    queue_names = {
        settings.bridge_queue,
        settings.bridge_http_subscribers_queue,
        *(q.name for q in Queue.all(connection=client, serializer=JOB_SERIALIZER)),
    }
    queues = []
    for name in sorted(queue_names):
        queue = Queue(name, connection=client, serializer=JOB_SERIALIZER)
        queues.append(
            {
                "name": name,
                "queued": queue.count,
                "started": StartedJobRegistry(queue=queue).count,
                "failed": FailedJobRegistry(queue=queue).count,
                "scheduled": ScheduledJobRegistry(queue=queue).count,  # type: ignore[no-untyped-call]
                "deferred": DeferredJobRegistry(queue=queue).count,
                "finished": FinishedJobRegistry(queue=queue).count,
            }
        )
    workers = [
        {"name": w.name, "state": _text(w.get_state()), "queues": w.queue_names()}
        for w in Worker.all(connection=client)
    ]
    stream = settings.events_stream
    events: list[dict[str, Any]] = []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(stream, count=recent)  # type: ignore[assignment]
    for entry_id, fields in entries:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        occurred = None
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            occurred = orjson.loads(decoded.get("event", "{}")).get("occurred_at")
        events.append(
            {
                "id": _text(entry_id),
                "type": decoded.get("type"),
                "execution_id": decoded.get("execution_id") or None,
                "occurred_at": occurred,
            }
        )
    groups: list[dict[str, Any]] = []
    try:
        for group in client.xinfo_groups(stream):
            groups.append(
                {
                    "name": _text(group.get("name")),
                    "consumers": group.get("consumers"),
                    "pending": group.get("pending"),
                    "lag": group.get("lag"),
                    "last_delivered_id": _text(group.get("last-delivered-id")),
                }
            )
    except redis.ResponseError:  # the stream does not exist yet
        pass
    return {
        "queues": queues,
        "workers": workers,
        "stream": {
            "key": stream,
            "length": client.xlen(stream),
            "dead_letter_length": client.xlen(keys.DEAD_LETTER_STREAM),
        },
        "consumer_groups": groups,
        "open_executions": client.zcard(keys.OPEN_EXECUTIONS),
        "followup_pending": client.zcard(keys.FOLLOWUP_PENDING),
        "recent_events": events,
    }
