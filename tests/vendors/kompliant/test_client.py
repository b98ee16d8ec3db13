"""KompliantClient against the fake Kompliant over real HTTP: every method, every error class, retry
classification, envelope parsing."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import httpx
import pytest

from workers.core.errors import (
    KompliantAuthError,
    KompliantBadRequestError,
    KompliantConfigurationViolationError,
    KompliantNotFoundError,
    KompliantRetryableError,
    KompliantRuleViolationError,
)
from workers.core.settings import Settings
from workers.sandbox.fakes.kompliant import DEFAULT_ACCOUNT_ID
from workers.vendors.kompliant import (
    KompliantClient,
    business_application_details,
    get_kompliant_client,
)

if TYPE_CHECKING:
    from tests.support.vendor_rigs import KompliantRig


def test_business_application_lifecycle(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    created = client.create_business_application(
        email="ana@example.com", first_name="Ana", last_name="Lopez", referrer_value="exec-1"
    )
    assert created.workflow_id.startswith("w_") and created.subject_record_id.startswith("sr_")
    workflow = client.get_workflow(created.workflow_id)
    assert (workflow.type, workflow.state, workflow.referrer_value) == (
        "BUSINESS_APPLICATION",
        "CREATED",
        "exec-1",
    )
    assert workflow.applying_user_email == "ana@example.com" and workflow.started_at is None

    client.update_workflow(created.workflow_id, business_application_details(first_name="Anita"))
    client.start_workflow(created.workflow_id)
    started = client.get_workflow(created.workflow_id)
    assert started.state == "STARTED" and started.started_at
    assert started.business_application["applying_user"]["first_name"] == "Anita"
    assert [w.workflow_id for w in client.list_workflows(created.subject_record_id)] == [created.workflow_id]


def test_default_state_is_started(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    created = client.create_workflow(
        "BUSINESS_APPLICATION", details=business_application_details(email="b@example.com")
    )
    assert client.get_workflow(created.workflow_id).state == "STARTED"


def test_subject_record_and_account_provisioning(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    record = client.create_subject_record()
    assert record.startswith("sr_")
    provisioning = client.create_account_provisioning(subject_record_id=record)
    assert provisioning.subject_record_id == record
    assert client.get_workflow(provisioning.workflow_id).type == "ACCOUNT_PROVISIONING"
    application = client.create_business_application(email="c@example.com", subject_record_id=record)
    assert {w.type for w in client.list_workflows(record)} == {"ACCOUNT_PROVISIONING", "BUSINESS_APPLICATION"}
    assert application.subject_record_id == record


def test_second_application_on_a_subject_record_is_a_rule_violation(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    first = client.create_business_application(email="d@example.com")
    with pytest.raises(KompliantRuleViolationError) as caught:
        client.create_business_application(email="e@example.com", subject_record_id=first.subject_record_id)
    error = caught.value
    assert (error.code, error.sub_code, error.entity_type) == (
        "SYSTEM_RULE_VIOLATION",
        "SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT",
        "WORKFLOW",
    )
    assert error.trace_id and error.trace_id.startswith("trc_")
    assert not error.retryable and error.status_code == 400


def test_duplicate_email_is_a_configuration_violation(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    client.create_business_application(email="dup@example.com")
    with pytest.raises(KompliantConfigurationViolationError) as caught:
        client.create_business_application(email="DUP@example.com")
    assert caught.value.has_sub_code("duplicate_email") and not caught.value.retryable


def test_duplicate_email_allowed_by_knob(kompliant: KompliantRig) -> None:
    kompliant.state.allow_duplicate_emails = True
    client = kompliant.make_client()
    client.create_business_application(email="dup@example.com", referrer_value="a")
    client.create_business_application(email="dup@example.com", referrer_value="b")
    assert kompliant.state.business_applications_by_referrer() == {"a": 1, "b": 1}


def test_start_twice_and_update_after_start(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    created = client.create_business_application(email="f@example.com")
    client.start_workflow(created.workflow_id)
    with pytest.raises(KompliantRuleViolationError) as started:
        client.start_workflow(created.workflow_id)
    assert started.value.sub_code == "WORKFLOW_STARTED"
    with pytest.raises(KompliantRuleViolationError) as update:
        client.update_workflow(created.workflow_id, business_application_details(first_name="x"))
    assert update.value.sub_code == "WORKFLOW_STARTED"
    kompliant.state.end_workflow(created.workflow_id)
    with pytest.raises(KompliantRuleViolationError) as ended:
        client.start_workflow(created.workflow_id)
    assert ended.value.sub_code == "WORKFLOW_ENDED"


def test_not_found_is_entity_not_found(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    with pytest.raises(KompliantNotFoundError) as caught:
        client.get_workflow("w_doesnotexist")
    assert caught.value.code == "ENTITY_NOT_FOUND" and caught.value.status_code == 400
    with pytest.raises(KompliantNotFoundError):
        client.list_workflows("sr_doesnotexist")
    with pytest.raises(KompliantNotFoundError):
        kompliant.make_client(account_id="sb_other").create_subject_record()


def test_bad_request(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    with pytest.raises(KompliantBadRequestError) as caught:
        client.create_business_application(email="not-an-email")
    assert caught.value.code == "BAD_REQUEST" and not caught.value.retryable
    with pytest.raises(KompliantBadRequestError):
        client.create_workflow("BUSINESS_APPLICATION")  # details required
    with pytest.raises(ValueError, match="100"):
        client.create_business_application(email="g@example.com", referrer_value="x" * 101)
    with pytest.raises(ValueError, match="CREATED or STARTED"):
        client.create_workflow("ACCOUNT_PROVISIONING", state="ENDED")


def test_wrong_secret_is_auth_error_with_envelope(kompliant: KompliantRig) -> None:
    client = kompliant.make_client(secret_key="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(KompliantAuthError) as caught:
        client.create_subject_record()
    assert caught.value.status_code == 401 and caught.value.code == "UNAUTHORIZED"
    assert caught.value.trace_id and not caught.value.retryable


def test_extra_signed_elements_verify_on_the_fake(kompliant: KompliantRig) -> None:
    client = kompliant.make_client(signed_elements="API-Key;HTTP-Verb;Timestamp;Nonce;Content-MD5")
    assert client.create_subject_record().startswith("sr_")


@pytest.mark.parametrize(("status", "retry_after"), [(503, "4"), (429, "Wed, 21 Oct 2015 07:28:00 GMT")])
def test_injected_failures_are_retryable(kompliant: KompliantRig, status: int, retry_after: str) -> None:
    client = kompliant.make_client()
    kompliant.state.faults.update({"fail_next": 1, "fail_status": status, "fail_retry_after": retry_after})
    with pytest.raises(KompliantRetryableError) as caught:
        client.create_subject_record()
    assert caught.value.retryable and caught.value.status_code == status
    assert caught.value.retry_after == (4.0 if status == 503 else 0.0)  # a past date means "now"
    assert client.create_subject_record()


def test_timeout_and_connection_errors_are_retryable(kompliant: KompliantRig) -> None:
    slow = kompliant.make_client(timeout=httpx.Timeout(0.2, connect=1.0))
    kompliant.state.faults.update({"latency_ms": 600})
    with pytest.raises(KompliantRetryableError) as timeout:
        slow.create_subject_record()
    assert timeout.value.retryable and timeout.value.status_code is None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(KompliantRetryableError) as refused:
        kompliant.make_client(base_url=f"http://127.0.0.1:{port}").create_subject_record()
    assert refused.value.retryable


def test_fake_lists_workflows_for_other_processes(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    client.create_business_application(email="h@example.com", referrer_value="exec-9")
    listing = httpx.get(str(kompliant.server.url) + "/_fake/workflows").json()
    assert listing["business_applications_by_referrer"] == {"exec-9": 1}
    assert listing["workflows"][0]["details"]["business_application_details"]["referrer_value"] == "exec-9"


def test_version_header_is_sent(kompliant: KompliantRig) -> None:
    seen: list[httpx.Headers] = []
    client = kompliant.make_client(event_hooks={"request": [lambda r: seen.append(r.headers)]})
    client.create_subject_record()
    assert seen[0]["x-api-version"] == "2025-03-24"
    assert seen[0]["authorization"].startswith("KSig1-HMAC-SHA256 ")


def test_factory_caches_per_settings() -> None:
    settings = Settings(
        kompliant_api_key="sb_x",
        kompliant_secret_key="xBeain5pFnPyQkl98qzA+BG+Cjzskpqq9fGKDbDoXNP5",
        kompliant_auth_token="t",
        kompliant_account_id=DEFAULT_ACCOUNT_ID,
    )
    assert get_kompliant_client(settings) is get_kompliant_client(settings)
    with pytest.raises(ValueError, match="BRIDGE_KOMPLIANT_API_KEY"):
        KompliantClient.from_settings(Settings())
