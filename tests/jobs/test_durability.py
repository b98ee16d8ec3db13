"""The durability helper against real redis-servers: a single node with AOF off and on, and a primary with
a replica behind a delayed link. It waits for what the level asks, counts writes made on any connection,
and refuses in time (a transient error) when the level cannot be reached."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.replication import Pair, replicated_pair
from workers.core.errors import DurabilityError
from workers.core.settings import Settings, load_settings
from workers.jobs import durability
from workers.sandbox.redis_server import RedisServer


def settings_for(url: str, level: str = "auto", timeout_ms: int = 200, **extra: object) -> Settings:
    return load_settings(
        redis_url=url, bridge_durability=level, bridge_durability_timeout_ms=timeout_ms,
        redis_timeout_seconds=10, **extra,
    )  # fmt: skip


def version_of(client: redis.Redis) -> tuple[int, ...]:
    return tuple(int(part) for part in str(client.info("server")["redis_version"]).split(".")[:2])


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    yield from replicated_pair(0.3)


def test_a_single_node_without_aof_waits_for_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    target = durability.ensure(redis_client, settings_for(redis_url))
    assert (target.replicas, target.local_fsync) == (0, False)
    assert "no replica" in target.why and "AOF off" in target.why


def test_none_asks_redis_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    target = durability.ensure(redis_client, settings_for(redis_url, "none"))
    assert (target.replicas, target.local_fsync) == (0, False)
    assert redis_client.dbsize() == 0  # no probe written


def test_replica_level_without_a_replica_refuses_within_its_timeout(
    redis_url: str, redis_client: redis.Redis
) -> None:
    began = time.monotonic()
    with pytest.raises(DurabilityError) as caught:
        durability.ensure(redis_client, settings_for(redis_url, "replica", timeout_ms=200))
    assert 0.15 <= time.monotonic() - began < 2
    assert caught.value.retryable and "0 of 1 replica" in str(caught.value)


def test_aof_level_on_a_node_without_aof_refuses(redis_url: str, redis_client: redis.Redis) -> None:
    with pytest.raises(DurabilityError) as caught:
        durability.ensure(redis_client, settings_for(redis_url, "aof"))
    assert caught.value.retryable


def test_aof_level_with_aof_on_waits_for_the_fsync_where_redis_can_confirm_it(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    s = settings_for(private_redis.url, "aof")
    if version_of(client) >= (7, 2):
        target = durability.ensure(client, s)
        assert target.local_fsync
        auto = durability.ensure(client, settings_for(private_redis.url))
        assert auto.local_fsync
    else:  # no WAITAOF before 7.2: an explicit aof level cannot be confirmed, auto says why it skips it
        with pytest.raises(DurabilityError, match=r"7\.2"):
            durability.ensure(client, s)
        auto = durability.ensure(client, settings_for(private_redis.url))
        assert not auto.local_fsync and "WAITAOF" in auto.why


def test_auto_with_a_replica_waits_until_writes_of_any_connection_are_replicated(pair: Pair) -> None:
    writer, waiter, replica = (Pair.client(pair.primary), Pair.client(pair.primary),
                               Pair.client(pair.replica))  # fmt: skip
    writer.set("workfloo:test:anchor", "1")  # on a connection the helper never uses
    began = time.monotonic()
    target = durability.ensure(waiter, settings_for(pair.primary.url, timeout_ms=5000))
    assert target.replicas == 1 and "1 connected replica" in target.why
    assert time.monotonic() - began >= 0.3  # the link is 0.3 s each way: the wait was real
    assert replica.get("workfloo:test:anchor") == b"1"


def test_replica_level_refuses_when_the_replica_lags_past_the_timeout(pair: Pair) -> None:
    client = Pair.client(pair.primary)
    with pytest.raises(DurabilityError):
        durability.ensure(client, settings_for(pair.primary.url, "replica", timeout_ms=100))


def test_explicit_replica_count_above_the_connected_ones_refuses(pair: Pair) -> None:
    client = Pair.client(pair.primary)
    s = settings_for(pair.primary.url, "replica", timeout_ms=1500, bridge_durability_replicas=2)
    with pytest.raises(DurabilityError, match="1 of 2 replicas"):
        durability.ensure(client, s)
