"""Redis loses its last writes: a primary and a replica whose replication link is delayed by a loopback
proxy; the hand-off runs against the primary, the primary is SIGKILLed right after the vendor calls, the
replica is promoted and the hand-off runs again against it.

Anchors written but not yet replicated are gone after the failover: unless each anchor was made durable
before the vendor call that depends on it, the second run creates a second business application (accounts
that allow duplicate e-mails) or takes its own application for someone else's (``DUPLICATE_EMAIL``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support.replication import Pair, replicated_pair
from workers.core.errors import DurabilityError
from workers.core.events import EventType
from workers.core.settings import Settings, load_settings
from workers.fanout.publisher import Publisher
from workers.jobs.handoff import Handoff, HandoffResult
from workers.jobs.outcome import Applicant
from workers.sandbox.fakes import kompliant as fake
from workers.sandbox.serving import ServerThread
from workers.sandbox.wait import wait_until
from workers.vendors.kompliant.client import KompliantClient

LATENCY_SECONDS = 0.3


@pytest.fixture
def pair() -> Iterator[Pair]:
    yield from replicated_pair(LATENCY_SECONDS)


def bridge_settings(url: str) -> Settings:
    # BRIDGE_DURABILITY is left at its default: the topology (one replica) decides what is waited for.
    return load_settings(
        redis_url=url, handoff_lock_ttl_seconds=2, redis_timeout_seconds=10, bridge_durability_timeout_ms=5000
    )


def kompliant_client(kompliant: ServerThread) -> KompliantClient:
    return KompliantClient(
        kompliant.url,
        api_key=fake.DEFAULT_API_KEY,
        secret_key=fake.DEFAULT_SECRET_KEY,
        auth_token=fake.DEFAULT_AUTH_TOKEN,
        account_id=fake.DEFAULT_ACCOUNT_ID,
    )


def run_handoff(connection: redis.Redis, client: KompliantClient, execution_id: str, who: Applicant) -> Any:
    s = bridge_settings(_url_of(connection))
    return Handoff(connection, s, client, Publisher(connection, s)).run(execution_id, who)


def _url_of(connection: redis.Redis) -> str:
    kwargs = connection.get_connection_kwargs()
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def applicant(n: int) -> Applicant:
    return Applicant(first_name="Ana", last_name="López", email=f"ana{n}@example.com")


def timeline_types(connection: redis.Redis, execution_id: str) -> list[str]:
    s = bridge_settings(_url_of(connection))
    return [event.type for event in Publisher(connection, s).timeline(execution_id)]


def assert_exactly_one_started(
    kompliant: ServerThread, execution_ids: list[str], results: dict[str, HandoffResult]
) -> None:
    fake_state = kompliant.server.config.app.state.fake
    counts = fake_state.business_applications_by_referrer()
    assert {e: counts[e] for e in execution_ids} == dict.fromkeys(execution_ids, 1)
    started = [w for w in fake_state.business_applications() if w["state"] == "STARTED"]
    assert len(started) == len(execution_ids)
    assert {e: r.outcome for e, r in results.items()} == dict.fromkeys(execution_ids, "started")


@pytest.mark.parametrize(
    "duplicates_allowed", [True, False], ids=["duplicate-emails-allowed", "unique-emails"]
)
def test_a_failover_that_loses_the_last_writes_leaves_one_started_application(
    pair: Pair, serve: Callable[..., ServerThread], duplicates_allowed: bool
) -> None:
    kompliant = serve(fake.create_app(allow_duplicate_emails=duplicates_allowed))
    with kompliant_client(kompliant) as client:
        first = run_handoff(pair.client(pair.primary), client, "exec-failover", applicant(1))
        assert first.outcome == "started"
        promoted = pair.fail_over()  # right after the vendor calls: the replica is LATENCY_SECONDS behind
        again = run_handoff(promoted, client, "exec-failover", applicant(1))
    assert_exactly_one_started(kompliant, ["exec-failover"], {"exec-failover": again})
    assert again.workflow_id == first.workflow_id
    assert EventType.KOMPLIANT_WORKFLOW_REJECTED not in timeline_types(promoted, "exec-failover")


def test_a_replica_level_with_no_replica_refuses_to_call_the_vendor(
    pair: Pair, serve: Callable[..., ServerThread]
) -> None:
    """BRIDGE_DURABILITY=replica is a floor: with the replica gone the hand-off retries (transient)
    instead of creating a workflow whose anchor would live on the primary alone."""
    kompliant = serve(fake.create_app())
    primary = pair.client(pair.primary)
    pair.client(pair.replica).execute_command("REPLICAOF", "NO", "ONE")
    wait_until(lambda: primary.info("replication")["connected_slaves"] == 0, what="the replica to leave")
    s = load_settings(
        redis_url=_url_of(primary), bridge_durability="replica", bridge_durability_timeout_ms=300
    )
    with kompliant_client(kompliant) as client, pytest.raises(DurabilityError) as caught:
        Handoff(primary, s, client, Publisher(primary, s)).run("exec-alone", applicant(2))
    assert caught.value.retryable
    methods = [method for method, _, _ in kompliant.server.config.app.state.fake.requests]
    assert methods == ["subjectRecord.create"]  # no workflow.create, no workflow.start
