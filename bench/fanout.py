"""Fan-out latency at a fixed rate (default 200/s), against a baseline measured in the same run.

    python -m bench.fanout                 # publish → consumer-group read (job-side publish)
    python -m bench.fanout --mode e2e      # callback POST → receiver → RQ worker → stream (XREAD BLOCK)

Baseline: a bare ``XADD`` → ``XREAD BLOCK`` round trip on the same private redis-server at the same rate.
``publish`` mode times ``Publisher.publish`` (the Lua call with once_key, state fields, timeline and
pub/sub) until a ``Consumer`` handler sees the event. ``e2e`` mode needs the receiver intake and
``workers.jobs.callbacks``; it times each NIP callback from just before the POST until its first event
(keyed by execution id) is read from the stream.

Producer and reader are threads of one process (the GIL adds a little to both sides alike); every run is
bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from workers.core.crypto import generate_entry
from workers.core.events import Event, EventType, Source, fact_event_id
from workers.core.settings import Settings, load_settings
from workers.fanout.consumer import Consumer
from workers.fanout.publisher import Publisher
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.wait import holds_within

STREAM = "workfloo:events"


def paced(rate: float, seconds: float, send: Callable[[int], None]) -> int:
    """Call ``send(i)`` ``rate`` times a second for ``seconds`` on a fixed schedule (no drift)."""
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)
    return total


def summary(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"n": len(ordered), "p50": q[49], "p99": q[98], "max": ordered[-1]}


def _wait_for(count: Callable[[], int], expected: int, timeout: float) -> None:
    """Until ``expected`` arrived or ``timeout`` passed: a short count shows in the figures."""
    holds_within(lambda: count() >= expected, timeout)


def baseline(url: str, rate: float, seconds: float) -> list[float]:
    """Bare XADD → XREAD BLOCK."""
    stream = "bench:baseline"
    client = redis.Redis.from_url(url)
    received: list[float] = []
    stop = threading.Event()
    reader_client = redis.Redis.from_url(url)

    def reader() -> None:
        last = "$"
        while not stop.is_set():
            reply: Any = reader_client.xread({stream: last}, block=200, count=100)
            now = time.perf_counter()
            for entry_id, fields in reply[0][1] if reply else []:
                last = entry_id
                received.append((now - float(fields[b"t"])) * 1000)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.2)
    total = paced(
        rate, seconds, lambda i: client.xadd(stream, {"t": repr(time.perf_counter()), "pad": "x" * 300})
    )
    _wait_for(lambda: len(received), total, 10)
    stop.set()
    thread.join(timeout=2)
    reader_client.close()
    client.close()
    return received


def publish_mode(url: str, settings: Settings, rate: float, seconds: float) -> list[float]:
    """Publisher.publish (full Lua path) → Consumer handler."""
    sent: dict[str, float] = {}
    received: list[float] = []
    stop = threading.Event()

    def handle(event: Event) -> None:
        received.append((time.perf_counter() - sent[event.id]) * 1000)

    client = redis.Redis.from_url(url)
    reader_client = redis.Redis.from_url(url)
    consumer = Consumer(
        reader_client, "bench", "bench-1", handle, types=["nip.*"], block_ms=200, settings=settings
    )
    consumer.ensure_group()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    publisher = Publisher(client, settings)

    def send(i: int) -> None:
        event = Event(
            type=EventType.NIP_SENT,
            execution_id=f"bench{i % 500:04d}",
            source=Source.KIBAN,
            data={"date": "2026-11-22T23:00:00Z", "link_id": f"L{i}"},
        )
        once_key = f"bench:{i}"
        sent[fact_event_id(once_key)] = time.perf_counter()  # the id the publisher gives the fact
        publisher.publish(
            event,
            once_key=once_key,
            state_key=f"workfloo:exec:bench{i % 500:04d}",
            state_fields={"nip_phase": "SENT"},
        )

    total = paced(rate, seconds, send)
    _wait_for(lambda: len(received), total, 10)
    stop.set()
    thread.join(timeout=2)
    reader_client.close()
    client.close()
    return received


def e2e_mode(
    server: RedisServer, settings: Settings, rate: float, seconds: float, workers: int
) -> list[float]:
    """Callback POST → receiver → the project's workers → stream, read with XREAD BLOCK."""
    try:
        importlib.import_module("workers.jobs.callbacks")
        importlib.import_module("receiver.app")
    except ImportError as exc:
        raise SystemExit(f"e2e mode needs the receiver intake and workers.jobs.callbacks ({exc})") from None
    import httpx

    from workers.sandbox.serving import receiver_thread

    key = "cb-a52ec88f4b99feef29a72bf218fa851a6fbefd07"
    os.environ.update({"REDIS_URL": server.url, "BRIDGE_CALLBACK_KEYS": key, "BRIDGE_LOG_LEVEL": "WARNING"})
    os.environ.setdefault("BRIDGE_DATA_KEYS", generate_entry("bench"))  # receiver and workers need one
    app_settings = load_settings()
    cli = Path(sys.executable).parent / "workfloo-bridge"
    pool = [
        subprocess.Popen([str(cli), "worker", "--name", f"bench-{n}"], env={**os.environ})
        for n in range(workers)
    ]
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    stop = threading.Event()
    reader_client = redis.Redis.from_url(server.url)
    # Measure the steady state, not worker start-up: wait until every worker has registered.
    from rq import Worker

    _wait_for(lambda: len(Worker.all(connection=reader_client)), workers, 30)

    def reader() -> None:
        last = "$"
        while not stop.is_set():
            reply: Any = reader_client.xread({settings.events_stream: last}, block=200, count=500)
            now = time.perf_counter()
            for entry_id, fields in reply[0][1] if reply else []:
                last = entry_id
                execution = fields.get(b"execution_id", b"").decode()
                if execution in sent and execution not in received:
                    received[execution] = now

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with (
            receiver_thread(app_settings) as http,
            httpx.Client(base_url=http.url) as web,
        ):

            def send(i: int) -> None:
                execution = f"bench{i:06d}"
                body = {"event": "SENT", "date": f"2026-11-22T23:00:00.{i:06d}Z", "linkId": f"L{i}"}
                sent[execution] = time.perf_counter()
                response = web.post(
                    f"/v1/kiban/executions/{execution}/nip-events", json=body, headers={"x-api-key": key}
                )
                response.raise_for_status()

            # Warm-up (not measured): the first job in each worker imports the job modules and
            # opens its connections; then measure the steady state.
            warm = paced(rate, 1.0, lambda i: send(900_000 + i))
            _wait_for(lambda: len(received), warm, 30)
            sent.clear()
            received.clear()
            total = paced(rate, seconds, send)
            _wait_for(lambda: len(received), total, 30)
    finally:
        stop.set()
        thread.join(timeout=2)
        for worker in pool:
            worker.terminate()
        for worker in pool:
            worker.wait(timeout=10)
        reader_client.close()
    return [(received[e] - sent[e]) * 1000 for e in received]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["publish", "e2e"], default="publish")
    parser.add_argument("--rate", type=float, default=200.0, help="events (or callbacks) per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run")
    parser.add_argument(
        "--subscribers",
        type=int,
        default=0,
        help="publish mode: matching HTTP subscribers (jobs enqueued, not run)",
    )
    parser.add_argument("--workers", type=int, default=2, help="e2e mode: `workfloo-bridge worker` processes")
    args = parser.parse_args()

    with RedisServer() as server:
        secret = "whsec_" + base64.b64encode(b"bench-secret-bench-secret-bench!").decode()
        subs = [
            {"url": f"https://sub{i}.example/h", "types": ["nip.*"], "secret": secret}
            for i in range(args.subscribers)
        ]
        settings = load_settings(redis_url=server.url, events_stream=STREAM, bridge_http_subscribers=subs)
        base = summary(baseline(server.url, args.rate, args.seconds))
        if args.mode == "publish":
            label = "publish → consumer group read" + (
                f" ({args.subscribers} subscribers)" if args.subscribers else ""
            )
            measured = summary(publish_mode(server.url, settings, args.rate, args.seconds))
        else:
            label = f"callback POST → receiver → {args.workers} workers → stream"
            measured = summary(e2e_mode(server, settings, args.rate, args.seconds, args.workers))

    print(f"fan-out latency at {args.rate:.0f}/s for {args.seconds:.0f} s (ms)")
    print(f"{'':<62}{'n':>6}{'p50':>9}{'p99':>9}{'max':>9}")
    for name, row in (("baseline: bare XADD → XREAD BLOCK", base), (label, measured)):
        print(f"{name:<62}{row['n']:>6.0f}{row['p50']:>9.2f}{row['p99']:>9.2f}{row['max']:>9.2f}")
    p50, p99 = measured["p50"] / base["p50"], measured["p99"] / base["p99"]
    print(f"ratio measured/baseline: p50 {p50:.1f}x, p99 {p99:.1f}x")
    expected = int(args.rate * args.seconds)
    if measured["n"] < expected:
        print(
            f"WARNING: {expected - measured['n']:.0f} of {expected} events were not seen within the timeout"
        )


if __name__ == "__main__":
    main()
