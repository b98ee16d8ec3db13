"""Kompliant hand-off against the fake Kompliant over HTTP and real Redis: the anchors give exactly one
BUSINESS_APPLICATION whatever was left behind by a crash, and concurrent hand-offs do not double it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from workers.core.errors import PermanentError
from workers.core.events import EventType
from workers.core.settings import Settings, load_settings
from workers.fanout.publisher import Publisher
from workers.jobs import state
from workers.jobs.handoff import Handoff
from workers.jobs.outcome import Applicant
from workers.sandbox.fakes import kompliant as fake
from workers.sandbox.serving import ServerThread
from workers.vendors.kompliant.client import KompliantClient

ANA = Applicant(first_name="Ana", last_name="López", email="ana@example.com")


@pytest.fixture
def kompliant(serve: Callable[..., ServerThread]) -> ServerThread:
    return serve(fake.create_app())


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return load_settings(redis_url=redis_url, handoff_lock_ttl_seconds=2)


@pytest.fixture
def client(kompliant: ServerThread) -> Iterator[KompliantClient]:
    with KompliantClient(
        kompliant.url,
        api_key=fake.DEFAULT_API_KEY,
        secret_key=fake.DEFAULT_SECRET_KEY,
        auth_token=fake.DEFAULT_AUTH_TOKEN,
        account_id=fake.DEFAULT_ACCOUNT_ID,
    ) as c:
        yield c


def handoff(redis_client: redis.Redis, settings: Settings, client: KompliantClient) -> Handoff:
    return Handoff(redis_client, settings, client, Publisher(redis_client, settings))


def state_of(kompliant: ServerThread) -> Any:
    return kompliant.server.config.app.state.fake


def types(redis_client: redis.Redis, settings: Settings, execution_id: str) -> list[str]:
    return [e.type for e in Publisher(redis_client, settings).timeline(execution_id)]


def test_creates_and_starts_once_even_when_run_again(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient, kompliant: ServerThread
) -> None:
    first = handoff(redis_client, settings, client).run("exec1", ANA)
    again = handoff(redis_client, settings, client).run("exec1", ANA)
    assert first.outcome == again.outcome == "started"
    assert first.workflow_id == again.workflow_id
    assert state_of(kompliant).business_applications_by_referrer()["exec1"] == 1
    [workflow] = state_of(kompliant).business_applications()
    assert workflow["state"] == "STARTED"
    assert workflow["details"]["business_application_details"]["applying_user"]["email"] == "ana@example.com"
    seen = types(redis_client, settings, "exec1")
    assert seen.count(EventType.KOMPLIANT_WORKFLOW_CREATED) == 1
    assert seen.count(EventType.KOMPLIANT_WORKFLOW_STARTED) == 1


def test_crash_after_create_before_persisting_adopts(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient, kompliant: ServerThread
) -> None:
    # The state a SIGKILL right after workflow.create leaves: subject record persisted, workflow id not.
    subject = client.create_subject_record()
    state.set_fields(redis_client, "exec2", {state.KOMPLIANT_SUBJECT_RECORD: subject})
    created = client.create_business_application(
        email="bo@example.com", referrer_value="exec2", subject_record_id=subject
    )
    result = handoff(redis_client, settings, client).run("exec2", Applicant("Bo", "Ruiz", "bo@example.com"))
    assert result.adopted and result.workflow_id == created.workflow_id
    assert state_of(kompliant).business_applications_by_referrer()["exec2"] == 1
    assert state.get_field(redis_client, "exec2", state.KOMPLIANT_WORKFLOW) == created.workflow_id


def test_crash_after_start_before_marking_treats_started_as_success(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient, kompliant: ServerThread
) -> None:
    subject = client.create_subject_record()
    created = client.create_business_application(
        email="cy@example.com", referrer_value="exec3", subject_record_id=subject
    )
    client.start_workflow(created.workflow_id)
    state.set_fields(
        redis_client,
        "exec3",
        {state.KOMPLIANT_SUBJECT_RECORD: subject, state.KOMPLIANT_WORKFLOW: created.workflow_id},
    )
    result = handoff(redis_client, settings, client).run("exec3", Applicant("Cy", None, "cy@example.com"))
    assert result.outcome == "started"
    assert state.get_field(redis_client, "exec3", state.KOMPLIANT_STARTED) == "1"
    assert state_of(kompliant).business_applications_by_referrer()["exec3"] == 1


def test_duplicate_email_without_proof_of_ownership_is_a_conflict_and_remembered(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient, kompliant: ServerThread
) -> None:
    """Kompliant cannot be asked which application holds an e-mail, and the other one may be this
    execution's own whose anchors Redis lost: an explicit conflict, never a rejection."""
    handoff(redis_client, settings, client).run("exec4", ANA)
    result = handoff(redis_client, settings, client).run("exec5", ANA)
    assert result.outcome == "conflict" and result.reason == "DUPLICATE_EMAIL"
    assert handoff(redis_client, settings, client).run("exec5", ANA).outcome == "conflict"
    assert "exec5" not in state_of(kompliant).business_applications_by_referrer()
    assert types(redis_client, settings, "exec5") == [EventType.KOMPLIANT_WORKFLOW_CONFLICT]
    [event] = Publisher(redis_client, settings).timeline("exec5")
    assert event.data == {
        "code": "ACCOUNT_CONFIGURATION_VIOLATION",
        "sub_code": "DUPLICATE_EMAIL",
        "entity_type": "WORKFLOW",
        "trace_id": event.data["trace_id"],
    }
    assert "ana@example.com" not in event.model_dump_json()


def test_a_foreign_application_on_the_subject_record_is_a_conflict_not_adopted(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient, kompliant: ServerThread
) -> None:
    """Adoption needs proof: an application under the anchored subject record whose referrer names
    another execution is not this execution's own."""
    subject = client.create_subject_record()
    state.set_fields(redis_client, "exec9", {state.KOMPLIANT_SUBJECT_RECORD: subject})
    client.create_business_application(
        email="other@example.com", referrer_value="another-execution", subject_record_id=subject
    )
    result = handoff(redis_client, settings, client).run("exec9", ANA)
    assert result.outcome == "conflict" and result.reason == "SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT"
    assert "exec9" not in state_of(kompliant).business_applications_by_referrer()
    assert state.get_field(redis_client, "exec9", state.KOMPLIANT_WORKFLOW) is None
    assert types(redis_client, settings, "exec9") == [EventType.KOMPLIANT_WORKFLOW_CONFLICT]


def test_conflict_is_remembered_only_together_with_its_event(
    redis_client: redis.Redis,
    settings: Settings,
    client: KompliantClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A re-run stops at a remembered outcome, so the flag must never exist without the event:
    when publishing fails (Redis gone, worker killed), neither is written and the retry publishes."""
    handoff(redis_client, settings, client).run("exec4", ANA)

    def redis_gone(*args: Any, **kwargs: Any) -> bool:
        raise redis.ConnectionError("Redis went away")

    with monkeypatch.context() as patch:
        patch.setattr(Publisher, "publish", redis_gone)
        with pytest.raises(redis.ConnectionError):
            handoff(redis_client, settings, client).run("exec7", ANA)
    assert state.get_field(redis_client, "exec7", state.KOMPLIANT_CONFLICT) is None
    assert handoff(redis_client, settings, client).run("exec7", ANA).outcome == "conflict"
    assert types(redis_client, settings, "exec7") == [EventType.KOMPLIANT_WORKFLOW_CONFLICT]


def test_missing_email_is_permanent(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient
) -> None:
    with pytest.raises(PermanentError):
        handoff(redis_client, settings, client).run("exec6", Applicant("No", "Mail", None))


def test_concurrent_hand_offs_create_one_application(
    redis_client: redis.Redis, settings: Settings, client: KompliantClient, kompliant: ServerThread
) -> None:
    results: list[str | None] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn = redis.Redis.from_url(settings.redis_url or "")
            results.append(handoff(conn, settings, client).run("exec7", ANA).workflow_id)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    assert len(set(results)) == 1
    assert state_of(kompliant).business_applications_by_referrer()["exec7"] == 1


def test_anchors_alone_hold_without_the_lock(
    redis_client: redis.Redis,
    settings: Settings,
    client: KompliantClient,
    kompliant: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock is an optimisation: with it disabled, HSETNX + one-per-subject-record still give one."""
    monkeypatch.setattr(state.Lock, "acquire", lambda self, wait_seconds=0.0, poll_seconds=0.05: True)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn = redis.Redis.from_url(settings.redis_url or "")
            barrier.wait()
            handoff(conn, settings, client).run("exec8", ANA)
        except BaseException as exc:  # a loser may see a transient "limit but not listed yet"
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    handoff(redis_client, settings, client).run("exec8", ANA)  # a retry completes whatever is left
    assert state_of(kompliant).business_applications_by_referrer()["exec8"] == 1
    assert all(type(e).__name__ == "TransientError" for e in errors), errors
