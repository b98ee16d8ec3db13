"""What ``status`` reports, as one plain document: the CLI renders it or prints it as JSON.

Read-only: registries are counted with ``ZCARD``, never with RQ's ``count`` (whose cleanup fails the
jobs of dead workers)."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import redis

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import Settings
from workers.fanout.retention import group_positions
from workers.runtime import rq_internals


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def collect_status(client: redis.Redis, settings: Settings, recent: int = 10) -> dict[str, Any]:
    """Queue depths, started/failed jobs, workers, the event stream and per-consumer-group lag."""
    from rq import Queue, Worker

    # The HTTP subscribers' delivery queue is their lag: deliveries waiting, retrying (scheduled), failed.
    queue_names = {
        settings.bridge_queue,
        settings.bridge_http_subscribers_queue,
        *(q.name for q in Queue.all(connection=client, serializer=JOB_SERIALIZER)),
    }
    queues = []
    for name in sorted(queue_names):
        queue = Queue(name, connection=client, serializer=JOB_SERIALIZER)
        # Counted without RQ's registry cleanup: on the started registry it would fail every job whose
        # workers are all down (AbandonedJobError) instead of leaving it to the reaper.
        queues.append(
            {
                "name": name,
                "queued": queue.count,
                "started": rq_internals.registry_size(client, queue.started_job_registry.key),
                "failed": rq_internals.registry_size(client, queue.failed_job_registry.key),
                "scheduled": rq_internals.registry_size(client, queue.scheduled_job_registry.key),
                "deferred": rq_internals.registry_size(client, queue.deferred_job_registry.key),
                "finished": rq_internals.registry_size(client, queue.finished_job_registry.key),
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
    # Lag counts only what is still in the stream (Redis's own lag keeps counting trimmed entries);
    # trimmed_unacked is what each group lost to trimming or deletion (workers.fanout.retention).
    groups: list[dict[str, Any]] = [
        {
            "name": position.name,
            "consumers": position.consumers,
            "pending": position.pending,
            "lag": position.lag,
            "last_delivered_id": position.last_delivered_id,
            "trimmed_unacked": position.trimmed_unacked,
        }
        for position in group_positions(client, settings)
    ]
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
