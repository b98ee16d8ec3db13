"""Redis loses its last writes, at the size production meets it: a primary and a replica 500 ms behind
(a delayed loopback link), several hand-offs at once against the primary, the primary SIGKILLed as soon as
they return, the replica promoted, and every hand-off run again against it.

Run once with ``BRIDGE_DURABILITY=none`` to show the fault bites (the anchors are gone and each re-run
creates a second business application), then with the default (``auto``: one replica connected, so each
anchor is replicated before the vendor call that depends on it): exactly one started application each.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest
import redis

from tests.resilience.conftest import Figures
from tests.support.replication import replicated_pair
from workers.core.settings import load_settings
from workers.fanout.publisher import Publisher
from workers.jobs.handoff import Handoff, HandoffResult
from workers.jobs.outcome import Applicant
from workers.sandbox.fakes import kompliant as fake
from workers.sandbox.serving import ServerThread
from workers.vendors.kompliant.client import KompliantClient

pytestmark = pytest.mark.slow

LATENCY_SECONDS = 0.5
EXECUTIONS = 8


def _client(kompliant: ServerThread) -> KompliantClient:
    return KompliantClient(
        kompliant.url,
        api_key=fake.DEFAULT_API_KEY,
        secret_key=fake.DEFAULT_SECRET_KEY,
        auth_token=fake.DEFAULT_AUTH_TOKEN,
        account_id=fake.DEFAULT_ACCOUNT_ID,
    )


def _run_all(url: str, level: str, kompliant: ServerThread) -> dict[str, HandoffResult]:
    s = load_settings(
        redis_url=url, bridge_durability=level, bridge_durability_timeout_ms=5000, redis_timeout_seconds=10
    )
    results: dict[str, HandoffResult] = {}
    errors: list[BaseException] = []

    def one(n: int) -> None:
        connection = redis.Redis.from_url(url)
        try:
            with _client(kompliant) as client:
                who = Applicant(first_name="Ana", last_name="López", email=f"ana{n}@example.com")
                results[f"exec-{n}"] = Handoff(connection, s, client, Publisher(connection, s)).run(
                    f"exec-{n}", who
                )
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(EXECUTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("level", ["none", "auto"])
def test_failover_after_the_vendor_calls_keeps_one_application_per_execution(
    level: str, serve: Callable[..., ServerThread], figures: Figures
) -> None:
    kompliant = serve(fake.create_app(allow_duplicate_emails=True))
    fake_state = kompliant.server.config.app.state.fake
    with contextlib.contextmanager(replicated_pair)(LATENCY_SECONDS) as pair:
        began = time.monotonic()
        first = _run_all(pair.primary.url, level, kompliant)
        figures.add("hand-off wall time (s)", time.monotonic() - began)
        promoted = pair.fail_over()
        lost = sum(1 for n in range(EXECUTIONS) if not promoted.exists(f"workfloo:exec:exec-{n}"))
        figures.add("execution hashes lost by the failover", lost)
        again = _run_all(pair.replica.url, level, kompliant)
    counts = fake_state.business_applications_by_referrer()
    duplicated = sum(1 for n in range(EXECUTIONS) if counts[f"exec-{n}"] > 1)
    figures.add("executions with a second business application", duplicated)
    assert all(result.outcome == "started" for result in first.values())
    if level == "none":  # the fault is real: without the wait the re-run cannot see its anchors
        assert duplicated > 0
        return
    assert duplicated == 0
    assert {e: counts[e] for e in again} == dict.fromkeys(again, 1)
    assert all(again[e].workflow_id == first[e].workflow_id for e in again)
    started = [w for w in fake_state.business_applications() if w["state"] == "STARTED"]
    assert len(started) == EXECUTIONS
