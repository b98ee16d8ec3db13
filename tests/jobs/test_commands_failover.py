"""``start_application`` across a Redis failover that loses its last writes: the job runs on a primary
whose replica is 300 ms behind, the primary is SIGKILLed as soon as the job returns, the replica is
promoted and the job runs again there (as the reaper would run a job lost in flight).

The job's anchor is the Kiban execution id it checkpoints in the job's meta. Lost with the primary, the
re-run executes a second workfloo and sends the form (and the NIP) again; made durable before the form
step, the re-run resumes the same execution."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from rq.job import Job

from tests.support.replication import Pair, replicated_pair
from workers.core.contract import JOB_SERIALIZER
from workers.core.settings import get_settings
from workers.jobs import api
from workers.sandbox.fakes import kiban as fake_kiban
from workers.sandbox.serving import ServerThread
from workers.sandbox.wait import wait_until

KIBAN_KEY = "kiban-test-key"
FORM = {"email": "ana@example.com", "first_name": "Ana", "last_name_1": "López"}


@pytest.fixture
def pair() -> Iterator[Pair]:
    yield from replicated_pair(0.3)


def test_a_failover_after_start_application_leaves_one_execution_with_a_form(
    pair: Pair, serve: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    kiban = serve(fake_kiban.create_app(KIBAN_KEY))
    for name, value in {
        "REDIS_URL": pair.primary.url,
        "BRIDGE_KIBAN_BASE_URL": kiban.url,
        "BRIDGE_KIBAN_API_KEY": KIBAN_KEY,
        "BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID": "def-failover",
        "BRIDGE_PUBLIC_URL": "http://127.0.0.1:9",  # callbacks go nowhere: only the job's own calls count
        "BRIDGE_REDIS_TIMEOUT_SECONDS": "10",
        "BRIDGE_DURABILITY_TIMEOUT_MS": "5000",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        primary, replica = Pair.client(pair.primary), Pair.client(pair.replica)
        command_id = api.start_application(primary, FORM, "approved")
        wait_until(lambda: replica.exists(f"rq:job:{command_id}"), timeout=5, what="the job on the replica")
        # The job's function run as a worker runs it (current job set, meta checkpoints on the primary);
        # not through an RQ worker, whose stop can wait up to 60 s for its pub/sub thread.
        Job.fetch(command_id, connection=primary, serializer=JOB_SERIALIZER).perform()
        promoted = pair.fail_over()  # right after the job: the replica is 300 ms behind
        # The job again, from what the promoted replica holds (as a requeue by the reaper would run it).
        Job.fetch(command_id, connection=promoted, serializer=JOB_SERIALIZER).perform()
    finally:
        get_settings.cache_clear()
    executions = list(kiban.server.config.app.state.fake.executions.values())
    assert len(executions) == 1, "a second workfloo was executed for one command"
    assert executions[0].form  # the form reached the one execution
