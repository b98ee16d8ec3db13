"""An example subscriber of workfloo-bridge: a service that reacts to finished applications.

It needs only this package (and so redis-py), not the bridge. It joins a consumer group on the bridge's
stream, handles each event at least once, skips ids it has already handled (the idempotency key), and
prints one JSON line per handled event, so it can be piped or watched:

    REDIS_URL=redis://localhost:6379/0 python example/service.py --group crm --type 'workfloo.*'

SIGTERM or Ctrl-C stops it after the event in hand (within ``--block-ms`` when it is waiting). A real
service keeps the handled ids in its own database (a unique constraint), not in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from typing import cast

import redis
from workfloo_bridge_consumer import (
    Consumer,
    Event,
    EventType,
    NipFailedData,
    WorkflooFinishedData,
)

FINISHED = {EventType.WORKFLOO_COMPLETED, EventType.WORKFLOO_FAILED, EventType.WORKFLOO_ABANDONED}


class Service:
    def __init__(self) -> None:
        self.handled: set[str] = set()

    def handle(self, event: Event) -> None:
        if event.id in self.handled:  # delivered again after a crash or a claim: do nothing twice
            return
        line: dict[str, object] = {"id": event.id, "type": event.type, "execution_id": event.execution_id}
        if event.type in FINISHED:
            finished = cast(WorkflooFinishedData, event.data)
            line["decision"] = finished["decision"]
            line["hand_off"] = finished["decision"] == "approved" and finished["has_email"]
        elif event.type == EventType.NIP_FAILED:
            failed = cast(NipFailedData, event.data)
            line["will_resend"] = failed["recoverable"]
        print(json.dumps(line), flush=True)
        self.handled.add(event.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--group", default="example", help="consumer group (one per service)")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="member name")
    parser.add_argument("--type", dest="types", action="append", help="event type pattern, repeatable")
    parser.add_argument("--start", default="$", help="where a new group starts: $ (new events) or 0 (all)")
    parser.add_argument("--stream", default="workfloo:events", help="the bridge's BRIDGE_EVENTS_STREAM")
    parser.add_argument(
        "--block-ms", type=int, default=1000, help="longest wait for new events (and to stop)"
    )
    args = parser.parse_args(argv)

    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"), socket_timeout=10)
    service = Service()
    consumer = Consumer(
        client,
        args.group,
        args.name,
        service.handle,
        args.types,
        stream=args.stream,
        start_id=args.start,
        block_ms=args.block_ms,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    consumer.ensure_group()
    print(json.dumps({"ready": args.group}), flush=True)
    consumer.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
