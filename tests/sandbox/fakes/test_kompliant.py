"""The fake Kompliant's own rules and its test/demo surface."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from workers.core.errors import (
    KompliantBadRequestError,
    KompliantConfigurationViolationError,
    KompliantRuleViolationError,
)
from workers.sandbox.fakes.kompliant import DEFAULT_API_KEY, DEFAULT_AUTH_TOKEN, DEFAULT_SECRET_KEY
from workers.sandbox.wait import holds_within
from workers.vendors.kompliant.signing import KSig1Signer

if TYPE_CHECKING:
    from tests.support.vendor_rigs import KompliantRig


def _signed_post(url: str, body: bytes) -> httpx.Response:
    headers = KSig1Signer(DEFAULT_API_KEY, DEFAULT_SECRET_KEY, DEFAULT_AUTH_TOKEN).headers("POST", body)
    return httpx.post(url, content=body, headers={**headers, "content-type": "application/json"})


def test_unsigned_request_is_401_envelope(kompliant: KompliantRig) -> None:
    response = httpx.post(str(kompliant.server.url) + "/workflow.get", json={"workflow_id": "w_1"})
    assert response.status_code == 401
    body = response.json()
    assert body["meta"]["status"] == "ERROR" and body["meta"]["trace_id"].startswith("trc_")
    assert body["errors"][0]["code"] == "UNAUTHORIZED"


def test_unknown_method_and_bad_body(kompliant: KompliantRig) -> None:
    base = str(kompliant.server.url)
    assert _signed_post(base + "/workflow.cancel", b"{}").status_code == 404
    bad = _signed_post(base + "/workflow.get", b"[1]")
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "BAD_REQUEST"


def test_success_envelope_shape(kompliant: KompliantRig) -> None:
    body = b'{"account_id":"sb_fakeaccount","subject_record":{"type":"BUSINESS"}}'
    response = _signed_post(str(kompliant.server.url) + "/subjectRecord.create", body).json()
    assert response["meta"] == {**response["meta"], "status": "SUCCESS", "version": "2025-03-24"}
    assert response["data"]["subject_record"]["subject_record_id"].startswith("sr_")


def test_type_rules(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    person = client.create_subject_record("PERSON")
    with pytest.raises(KompliantRuleViolationError) as wrong_type:
        client.create_business_application(email="a@example.com", subject_record_id=person)
    assert wrong_type.value.sub_code == "INVALID_SUBJECT_RECORD_TYPE"
    with pytest.raises(KompliantRuleViolationError) as system_type:
        client.create_workflow("BUSINESS_UNDERWRITING")
    assert system_type.value.sub_code == "INVALID_WORKFLOW_TYPE"
    provisioning = client.create_account_provisioning()
    with pytest.raises(KompliantRuleViolationError) as update:
        client.update_workflow(provisioning.workflow_id, {"business_application_details": {}})
    assert update.value.sub_code == "INVALID_WORKFLOW_TYPE"
    with pytest.raises(KompliantBadRequestError):
        client.create_workflow("NOT_A_TYPE")


def test_update_keeps_email_unique(kompliant: KompliantRig) -> None:
    client = kompliant.make_client()
    client.create_business_application(email="taken@example.com")
    other = client.create_business_application(email="free@example.com")
    with pytest.raises(KompliantConfigurationViolationError) as caught:
        client.update_workflow(
            other.workflow_id,
            {"business_application_details": {"applying_user": {"email": "taken@example.com"}}},
        )
    assert caught.value.sub_code == "DUPLICATE_EMAIL"


def test_runtime_config_and_fault_envelope(kompliant: KompliantRig) -> None:
    base = str(kompliant.server.url)
    assert httpx.post(base + "/_fake/config", json={"allow_duplicate_emails": True}).status_code == 200
    assert kompliant.state.allow_duplicate_emails is True
    assert httpx.post(base + "/_fake/config", json={}).status_code == 422
    httpx.post(base + "/_fake/faults", json={"fail_next": 1, "fail_status": 429})
    limited = _signed_post(base + "/workflow.get", b'{"workflow_id":"w_x"}')
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["errors"][0]["code"] == "RATE_LIMIT_EXCEEDED"


def test_runs_as_a_process() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.sandbox.fakes.kompliant", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert holds_within(lambda: _up(url), timeout=15)
        body = b'{"account_id":"sb_fakeaccount","subject_record":{"type":"BUSINESS"}}'
        assert _signed_post(url + "/subjectRecord.create", body).status_code == 200
        assert len(httpx.get(url + "/_fake/workflows").json()["subject_records"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/_fake/faults", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
