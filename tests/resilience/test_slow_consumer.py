"""A slow consumer group against the real retention job: a worker process runs what RQ's cron scheduler
(a ``scheduler`` process) enqueues every second, while events pour in.

Promise checked: a group 10x ``BRIDGE_EVENTS_STREAM_MAXLEN`` behind, with entries pending after a handler
failure, loses nothing while the stream stays under the hard cap, and the stream goes back to the soft
cap once the group has caught up; past the hard cap every lost entry is counted, dead-lettered and
logged, and the group resumes with what is left, its lag right."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.resilience.conftest import Figures
from tests.support.workers_stack import Bridge, make_bridge
from workers.core import keys
from workers.core.events import Event, EventType
from workers.fanout.consumer import Consumer
from workers.fanout.publisher import Publisher
from workers.fanout.retention import group_positions, lost_counts
from workers.sandbox.wait import wait_until

pytestmark = pytest.mark.slow

SOFT = 1_000
HARD = 20_000
ENV = {
    "BRIDGE_EVENTS_STREAM_MAXLEN": str(SOFT),
    "BRIDGE_EVENTS_STREAM_HARD_MAXLEN": str(HARD),
    "BRIDGE_EVENTS_RETENTION_INTERVAL_SECONDS": "1",
}


def _failing(event: Event) -> None:
    raise RuntimeError("handler failed")


@pytest.fixture
def stack() -> Iterator[Bridge]:
    yield from make_bridge(ENV)


def test_slow_group_keeps_everything_below_the_hard_cap_and_loses_loudly_past_it(
    stack: Bridge, figures: Figures
) -> None:
    bridge = stack
    settings = bridge.stack.settings(events_stream_maxlen=SOFT, bridge_events_stream_hard_maxlen=HARD)
    client = bridge.redis
    stream = settings.events_stream
    publisher = Publisher(client, settings)

    def publish(n: int) -> list[str]:
        events = [Event(type=EventType.NIP_SENT, execution_id=f"x{i % 50}", data={"n": i}) for i in range(n)]
        for start in range(0, n, 500):
            publisher.publish_many(events[start : start + 500])
        return [e.id for e in events]

    slow = Consumer(client, "slow", "s1", _failing, start_id="0", count=100, settings=settings)
    slow.ensure_group()
    published = publish(100)
    slow.run_once(block=False)  # a handler failure: 100 pending
    bridge.start_worker()
    bridge.spawn("scheduler")
    published += publish(10 * SOFT)

    # Several retention runs go by: nothing the group still needs is trimmed.
    time.sleep(4)
    assert client.xlen(stream) == len(published)
    assert lost_counts(client, settings) == {}

    seen: list[str] = []
    healthy = Consumer(client, "slow", "s2", lambda e: seen.append(e.id), claim_idle_ms=0, settings=settings)
    while healthy.run_once(block=False):
        pass
    assert seen == published
    wait_until(lambda: client.xlen(stream) <= SOFT, timeout=15, what="the stream back at the soft cap")
    figures.add("group 10x the soft cap behind: entries lost", len(published) - len(seen))

    # Past the hard cap: the group fails again and falls 1.5x the hard cap behind.
    before = list(seen)
    failing = Consumer(client, "slow", "s3", _failing, count=100, settings=settings)
    more = publish(100)
    failing.run_once(block=False)
    more += publish(HARD + HARD // 2)
    wait_until(lambda: lost_counts(client, settings).get("slow"), timeout=30, what="the loss reported")
    wait_until(lambda: client.xlen(stream) <= HARD, timeout=30, what="the stream at the hard cap")
    left = client.xlen(stream)
    lost = lost_counts(client, settings)["slow"]
    letters = [
        fields
        for _id, fields in client.xrange(keys.DEAD_LETTER_STREAM)
        if fields.get(b"reason") == b"trimmed_unacked"
    ]
    figures.add("group 1.5x the hard cap behind: entries lost (counted)", lost)
    figures.add("dead-letter entries naming the lost ranges", len(letters))
    assert letters and all(f[b"group"] == b"slow" for f in letters)
    assert sum(int(f[b"undelivered"]) + int(f[b"pending"]) for f in letters) == lost
    assert lost == len(more) - left  # every entry gone is accounted for
    assert group_positions(client, settings)[0].lag == left
    assert any("events.trimmed_unacked" in line for _name, line in bridge.log_lines())

    seen.clear()
    resumed = Consumer(client, "slow", "s4", lambda e: seen.append(e.id), claim_idle_ms=0, settings=settings)
    while resumed.run_once(block=False):
        pass
    assert seen == more[-left:]
    assert before == published
