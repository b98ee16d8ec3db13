"""KibanClient against the fake Kiban over real HTTP: every operation, every error class, retry
classification and Retry-After parsing."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING

import httpx
import pytest

from workers.core.errors import (
    KibanAuthError,
    KibanConflictError,
    KibanError,
    KibanNipAlreadySentError,
    KibanNotFoundError,
    KibanRetryableError,
    KibanValidationError,
)
from workers.core.settings import Settings
from workers.vendors.kiban import WorkflooStatus
from workers.vendors.kiban.client import KibanClient, get_kiban_client
from workers.vendors.kiban.errors import parse_error_body

if TYPE_CHECKING:
    from tests.support.vendor_rigs import KibanRig

FORM = {"email": "ana@example.com", "first_name": "Ana", "last_name_1": "Lopez"}


def _to_link(kiban: KibanRig, client: KibanClient, scenario: str = "approved") -> str:
    execution_id = client.execute("def-1", scenario_id=scenario)
    client.submit_form(execution_id, FORM)
    return execution_id


def test_full_flow_every_step_typed(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = client.execute(
        "def-1",
        scenario_id="approved",
        callback_url=kiban.sink.url + "/v1/kiban/status",
        callback_api_key="cb-key",
    )
    assert len(execution_id) == 24
    status = client.get_status(execution_id)
    assert (status.status, status.current_node_type, status.is_terminal) == ("PROGRESS", "FORM", False)
    assert {"email", "first_name", "last_name_1"} <= set(status.form_field_ids)

    client.submit_form(execution_id, FORM)
    status = client.get_status(execution_id)
    assert (status.current_node_type, status.phase) == ("LINK", "CREATE_ACCOUNT")

    nip_url = kiban.sink.url + f"/v1/kiban/executions/{execution_id}/nip-events"
    client.send_nip(execution_id, url_callback=nip_url, api_key_callback="nip-key")
    assert client.get_status(execution_id).phase == "VALIDATE"
    events = kiban.sink.wait("/nip-events", 3)
    assert [e.body["event"] for e in events] == ["PENDING", "SENT", "SUCCESS"]

    assert client.validate_nip_twice(execution_id, "123456") == "VALIDATED"
    assert kiban.state.wait_for_status(execution_id, {"SUCCESS"})
    final = client.get_status(execution_id)
    assert final.is_terminal and final.status == "SUCCESS"

    detail = client.get_detail(execution_id)
    assert detail.status == "SUCCESS"
    assert detail.ruleset_exit == "APPROVED" and detail.is_approved()
    assert detail.form_fields["email"] == "ana@example.com"
    assert [r.result for r in detail.decision_tree] == [True]
    link_nodes = [n for n in detail.nodes if n.link is not None]
    assert link_nodes[0].link is not None and link_nodes[0].link.phase == "VALIDATED"


def test_validate_nip_returns_each_phase(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client)
    client.send_nip(execution_id)
    assert client.validate_nip(execution_id, "123456") == "VALIDATE_2"
    assert client.validate_nip(execution_id, "123456") == "VALIDATED"


def test_rejected_scenario_is_success_but_not_approved(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client, "rejected")
    client.send_nip(execution_id)
    client.validate_nip_twice(execution_id, "123456")
    assert kiban.state.wait_for_status(execution_id, {"SUCCESS"})
    detail = client.get_detail(execution_id)
    assert detail.ruleset_exit == "REJECTED" and not detail.is_approved()
    assert detail.is_approved(["REJECTED", "APPROVED"])


def test_resend_nip_returns_status(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client, "nip-error")
    client.send_nip(execution_id)
    assert kiban.state.wait_for_status(execution_id, {"PROGRESS"})
    resent = client.resend_nip(execution_id, country_code="+52", phone_number="5555555555")
    assert resent.phase == "VALIDATE" and resent.nip_type == "SMS"
    assert resent.country_code == "+52"


def test_execute_with_initial_form_skips_the_form_step(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = client.execute("def-1", scenario_id="approved", form=FORM)
    assert client.get_status(execution_id).current_node_type == "LINK"


def test_secondary_operations_reach_the_fake(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client)
    client.send_nip(execution_id)
    client.validate_nip_twice(execution_id, "123456")
    assert kiban.state.wait_for_status(execution_id, {"SUCCESS"})
    detail = client.get_detail(execution_id)
    bureau = next(n for n in detail.nodes if n.name == "Consulta Buró de Crédito")
    assert bureau.id is not None
    assert client.get_file(execution_id, bureau.id, "reporte_buro.pdf")
    with pytest.raises(KibanNotFoundError):
        client.get_file(execution_id, bureau.id, "missing.pdf")
    with pytest.raises(KibanAuthError) as otp:
        client.validate_otp(execution_id, "9999")
    assert otp.value.status_code == 403
    with pytest.raises(KibanAuthError):
        client.otp_fallback(execution_id)
    for call in (
        lambda: client.submit_document(execution_id, {"ine": "aGVsbG8="}),
        lambda: client.review(execution_id, "APPROVE", reviewer_note="ok", reviews=[{"fieldId": "x"}]),
        lambda: client.submit_correction(execution_id, {"first_name": "Ana"}),
    ):
        with pytest.raises(KibanConflictError) as conflict:
            call()
        assert conflict.value.status_code == 409 and not conflict.value.retryable


# --- errors ------------------------------------------------------------------------------------


def test_wrong_key_is_auth_error(kiban: KibanRig) -> None:
    client = kiban.make_client(api_key="wrong")
    with pytest.raises(KibanAuthError) as caught:
        client.execute("def-1", scenario_id="approved")
    assert caught.value.status_code == 401 and not caught.value.retryable


def test_unknown_execution_is_not_found(kiban: KibanRig) -> None:
    client = kiban.make_client()
    with pytest.raises(KibanNotFoundError) as caught:
        client.get_status("000000000000000000000000")
    assert caught.value.status_code == 404 and not caught.value.retryable


def test_unknown_scenario_is_not_found_with_envelope(kiban: KibanRig) -> None:
    client = kiban.make_client()
    with pytest.raises(KibanNotFoundError) as caught:
        client.execute("def-1", scenario_id="no-such-scenario")
    assert caught.value.type_error == "ELEMENT_NOT_EXIST_ERROR"
    assert "scenarioId not found" in str(caught.value)


def test_form_validation_parses_the_flat_field_map(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = client.execute("def-1", scenario_id="approved")
    with pytest.raises(KibanValidationError) as caught:
        client.submit_form(execution_id, {"email": "not-an-email", "first_name": "Ana"})
    fields = caught.value.fields
    assert fields["last_name_1"].codes == ("REQUIRED_FIELD_ERROR", "EMPTY_ERROR")
    assert fields["last_name_1"].message == "can't be empty"
    assert fields["email"].codes == ("FORMAT_ERROR",)
    assert "ana" not in str(caught.value).lower()  # no field values in the message


def test_form_twice_is_a_conflict(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client)
    with pytest.raises(KibanConflictError) as caught:
        client.submit_form(execution_id, FORM)
    assert not isinstance(caught.value, KibanNipAlreadySentError)


def test_missing_definition_parses_the_envelope(kiban: KibanRig) -> None:
    # The client refuses an empty id before sending, so speak to the fake directly.
    response = httpx.post(
        kiban.url + "/api/v1/workfloo",
        json={"scenarioId": "approved"},
        headers={"x-api-key": "kiban-test-key"},
    )
    body = parse_error_body(response.content)
    assert response.status_code == 400
    assert body.type_error == "REQUIRED_FIELDS"
    assert body.fields["idWorkflooDefinition"].message == "required"


def test_nip_sent_twice_is_already_sent(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client)
    client.send_nip(execution_id)
    with pytest.raises(KibanNipAlreadySentError) as caught:
        client.send_nip(execution_id)
    assert isinstance(caught.value, KibanConflictError)
    assert caught.value.status_code == 400 and not caught.value.retryable


def test_wrong_nip_is_validation_error(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _to_link(kiban, client)
    client.send_nip(execution_id)
    with pytest.raises(KibanValidationError) as caught:
        client.validate_nip(execution_id, "000000")
    assert caught.value.fields["nip"].codes == ("INVALID_NIP",)


def test_other_400_on_nip_send_is_not_already_sent(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = client.execute("def-1", scenario_id="approved")  # still on FORM
    with pytest.raises(KibanValidationError) as caught:
        client.send_nip(execution_id)
    assert not isinstance(caught.value, KibanNipAlreadySentError)
    assert caught.value.type_error == "STEP_ERROR"


@pytest.mark.parametrize("status", [503, 500, 429])
def test_injected_failures_are_retryable_with_retry_after_seconds(kiban: KibanRig, status: int) -> None:
    client = kiban.make_client()
    kiban.state.faults.update({"fail_next": 1, "fail_status": status, "fail_retry_after": "7"})
    with pytest.raises(KibanRetryableError) as caught:
        client.execute("def-1", scenario_id="approved")
    assert caught.value.retryable and caught.value.status_code == status
    assert caught.value.retry_after == 7.0
    assert client.execute("def-1", scenario_id="approved")  # the burst is over


def test_retry_after_http_date(kiban: KibanRig) -> None:
    client = kiban.make_client()
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    kiban.state.faults.update({"fail_next": 1, "fail_status": 429, "fail_retry_after": when})
    with pytest.raises(KibanRetryableError) as caught:
        client.get_status("000000000000000000000000")
    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30


def test_no_retry_after_header_gives_none(kiban: KibanRig) -> None:
    client = kiban.make_client()
    kiban.state.faults.update({"fail_next": 1, "fail_retry_after": None})
    with pytest.raises(KibanRetryableError) as caught:
        client.get_status("000000000000000000000000")
    assert caught.value.retry_after is None


def test_read_timeout_is_retryable(kiban: KibanRig) -> None:
    client = kiban.make_client(timeout=httpx.Timeout(0.2, connect=1.0))
    kiban.state.faults.update({"latency_ms": 600})
    with pytest.raises(KibanRetryableError) as caught:
        client.execute("def-1", scenario_id="approved")
    assert caught.value.retryable and caught.value.status_code is None
    assert "timed out" in str(caught.value)


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = KibanClient(f"http://127.0.0.1:{port}", "k", sandbox=False, timeout=httpx.Timeout(1.0))
    with pytest.raises(KibanRetryableError) as caught:
        client.get_status("000000000000000000000000")
    client.close()
    assert caught.value.retryable and caught.value.status_code is None


def test_errors_share_the_vendor_base() -> None:
    for cls in (KibanAuthError, KibanNotFoundError, KibanConflictError, KibanValidationError):
        assert issubclass(cls, KibanError)
    assert KibanRetryableError("x", retryable=True).retryable


# --- sandbox handling --------------------------------------------------------------------------


def test_sandbox_requires_a_scenario_before_sending(kiban: KibanRig) -> None:
    client = kiban.make_client()
    with pytest.raises(ValueError, match="scenario_id is required"):
        client.execute("def-1")
    assert kiban.state.requests == []


def test_default_scenario_comes_from_the_client(kiban: KibanRig) -> None:
    client = kiban.make_client(default_scenario_id="rejected")
    execution_id = client.execute("def-1")
    assert kiban.state.execution(execution_id).scenario == "rejected"


def test_sandbox_query_only_off_the_sandbox_host(kiban: KibanRig) -> None:
    seen: list[httpx.URL] = []
    hooks = {"request": [lambda request: seen.append(request.url)]}
    on_prod_host = kiban.make_client(sandbox_host="sandbox.workfloo.kiban.com", event_hooks=hooks)
    on_prod_host.execute("def-1", scenario_id="approved")
    on_sandbox_host = kiban.make_client(sandbox_host="127.0.0.1", event_hooks=hooks)
    on_sandbox_host.execute("def-1", scenario_id="approved")
    production = kiban.make_client(sandbox=False, event_hooks=hooks)
    production.execute("def-1", scenario_id="approved")
    assert [url.params.get("sandbox") for url in seen] == ["true", None, None]


def test_phone_goes_in_pairs(kiban: KibanRig) -> None:
    client = kiban.make_client()
    with pytest.raises(ValueError, match="both or neither"):
        client.send_nip("657118e1d511b6e54fe2a969", country_code="+52")


# --- models and factory ------------------------------------------------------------------------


def test_unknown_status_is_not_terminal_and_unknown_fields_are_ignored() -> None:
    status = WorkflooStatus.model_validate(
        {
            "id": "x",
            "status": "PAUSED_FOR_REASONS",
            "brandNewField": {"a": 1},
            "link": {"phase": "NEW", "x": 1},
        }
    )
    assert not status.is_terminal and status.phase == "NEW"
    for terminal in ("SUCCESS", "ERROR", "ABANDONED"):
        assert WorkflooStatus.model_validate({"id": "x", "status": terminal}).is_terminal
    assert WorkflooStatus.model_validate({"id": "x", "currentNodeType": "LINK_PROCESSING"}).is_processing


def test_factory_caches_one_client_per_settings() -> None:
    settings = Settings(kiban_api_key="k1", kiban_base_url="http://127.0.0.1:9")
    first = get_kiban_client(settings)
    assert get_kiban_client(settings) is first
    other = get_kiban_client(Settings(kiban_api_key="k2", kiban_base_url="http://127.0.0.1:9"))
    assert other is not first
    timeout = first._http.timeout
    assert (timeout.connect, timeout.read) == (3.0, 10.0)


def test_from_settings_needs_a_key() -> None:
    with pytest.raises(ValueError, match="BRIDGE_KIBAN_API_KEY"):
        KibanClient.from_settings(Settings(kiban_api_key=None))


def test_error_body_shapes() -> None:
    otp = parse_error_body(b'{"error": "wrong code", "remainingRetries": 2}')
    assert (otp.message, otp.remaining_retries) == ("wrong code", 2)
    assert parse_error_body(b"").fields == {}
    assert parse_error_body(b"<html>oops</html>").message == "<html>oops</html>"
    flat = parse_error_body(b'{"curp": "FORMAT_ERROR; invalid curp format"}')
    assert flat.fields["curp"].codes == ("FORMAT_ERROR",)


# --- answers the fake never gives (MockTransport is only for these) ----------------------------


def _mocked(handler, **kwargs) -> KibanClient:  # type: ignore[no-untyped-def]
    return KibanClient("https://workfloo.kiban.com", "k", transport=httpx.MockTransport(handler), **kwargs)


def test_bare_400_on_nip_send_is_already_sent_by_setting() -> None:
    client = _mocked(lambda request: httpx.Response(400))
    with pytest.raises(KibanNipAlreadySentError):
        client.send_nip("657118e1d511b6e54fe2a969")
    strict = _mocked(lambda request: httpx.Response(400), nip_send_bare_400_is_sent=False)
    with pytest.raises(KibanValidationError) as caught:
        strict.send_nip("657118e1d511b6e54fe2a969")
    assert not isinstance(caught.value, KibanNipAlreadySentError)


def test_marker_text_in_any_body_shape_means_already_sent() -> None:
    client = _mocked(lambda request: httpx.Response(400, text="Error: NIP previously sent"))
    with pytest.raises(KibanNipAlreadySentError):
        client.send_nip("657118e1d511b6e54fe2a969")


def test_success_without_json_is_a_non_retryable_error() -> None:
    client = _mocked(lambda request: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(KibanError) as caught:
        client.get_status("657118e1d511b6e54fe2a969")
    assert not caught.value.retryable and caught.value.status_code == 200


def test_unexpected_4xx_is_a_plain_kiban_error() -> None:
    client = _mocked(lambda request: httpx.Response(418))
    with pytest.raises(KibanError) as caught:
        client.get_status("657118e1d511b6e54fe2a969")
    assert type(caught.value) is KibanError and not caught.value.retryable
