"""Contract test: every request the KibanClient sends and every response the fake Kiban returns
validates against Kiban's published OpenAPI file (openapi-core), for every operation the client
implements, success and error answers alike. The fake's webhook bodies are checked against
``WorkflooStatus`` too.

``kiban-workfloo.openapi.yaml`` here is a verbatim copy of Kiban's upstream document (source and sha256 in
docs/vendor-assumptions.md, checked below);
refresh it only by copying a newer upstream version.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS30Validator

from workers.core.errors import KibanError

if TYPE_CHECKING:
    from tests.support.vendor_rigs import KibanRig

SPEC = Path(__file__).with_name("kiban-workfloo.openapi.yaml")
SPEC_SHA256 = "3181380a6a14f7485dcd0827a4e007da6cb2b923b3d3b9b50cd3f02fc026e91b"
SPEC_HOST = "https://workfloo.kiban.com"  # the fake stands in for the production host + ?sandbox=true

CLIENT_OPERATIONS = {
    "executeWorkfloo",
    "executeWorkflooForm",
    "executeWorkflooDocument",
    "sendWorkflooNip",
    "resendWorkflooNip",
    "validateWorkflooNip",
    "validateWorkflooOtp",
    "fallbackWorkflooOtp",
    "reviewWorkflooValidation",
    "submitWorkflooCorrection",
    "getWorkflooFile",
    "getWorkflooStatus",
    "getWorkfloo",
}
FORM = {"email": "ana@example.com", "first_name": "Ana", "last_name_1": "Lopez"}


@pytest.fixture(scope="module")
def spec_dict() -> dict[str, Any]:
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == SPEC_SHA256, "spec copy is not verbatim"
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC))


def _operation_matcher(spec: dict[str, Any]) -> list[tuple[str, re.Pattern[str], str]]:
    table = []
    for path, methods in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for method, operation in methods.items():
            table.append((method.upper(), pattern, operation["operationId"]))
    # Literal paths before templated ones (status/{id} vs {id}).
    table.sort(key=lambda row: row[1].pattern.count("[^/]+"))
    return table


def _operation_of(table: list[tuple[str, re.Pattern[str], str]], method: str, path: str) -> str:
    for candidate_method, pattern, operation_id in table:
        if candidate_method == method and pattern.match(path):
            return operation_id
    raise AssertionError(f"{method} {path} is not an operation of the spec")


def _drive_every_operation(kiban: KibanRig, exchanges: list[httpx.Response]) -> None:
    def keep(response: httpx.Response) -> None:
        response.read()
        exchanges.append(response)

    client = kiban.make_client(sandbox_host="sandbox.workfloo.kiban.com", event_hooks={"response": [keep]})
    callback = kiban.sink.url + "/v1/kiban/status"
    execution_id = client.execute(
        "def-1", scenario_id="nip-error", callback_url=callback, callback_api_key="k"
    )
    client.get_status(execution_id)
    with pytest.raises(KibanError):
        client.submit_form(execution_id, {"email": "nope"})  # 400 flat map
    client.submit_form(execution_id, FORM)
    nip_url = kiban.sink.url + f"/v1/kiban/executions/{execution_id}/nip-events"
    client.send_nip(execution_id, url_callback=nip_url, api_key_callback="nk")
    with pytest.raises(KibanError):
        client.send_nip(execution_id)  # 400 NIP previously sent
    kiban.sink.wait("/nip-events", 3)
    client.get_status(execution_id)  # link with events and sendError
    client.resend_nip(execution_id, country_code="+52", phone_number="5555555555")
    kiban.sink.wait("/nip-events", 6)
    with pytest.raises(KibanError):
        client.validate_nip(execution_id, "000000")  # 400
    client.validate_nip_twice(execution_id, "123456")
    assert kiban.state.wait_for_status(execution_id, {"SUCCESS"})
    detail = client.get_detail(execution_id)
    bureau = next(n for n in detail.nodes if n.name == "Consulta Buró de Crédito")
    assert bureau.id
    client.get_file(execution_id, bureau.id, "reporte_buro.pdf")
    for call in (
        lambda: client.get_file(execution_id, bureau.id or "", "nope.pdf"),
        lambda: client.validate_otp(execution_id, "1234"),
        lambda: client.otp_fallback(execution_id),
        lambda: client.submit_document(execution_id, {"ine": "aGVsbG8="}),
        lambda: client.review(execution_id, "APPROVE", reviewer_note="ok"),
        lambda: client.submit_correction(execution_id, {"first_name": "Ana"}),
        lambda: client.get_status("ffffffffffffffffffffffff"),
        lambda: client.get_detail("ffffffffffffffffffffffff"),
    ):
        with pytest.raises(KibanError):
            call()
    with pytest.raises(KibanError):
        client.execute("def-1", scenario_id="unknown-scenario")  # 404 envelope


def test_spec_copy_is_verbatim(spec_dict: dict[str, Any]) -> None:
    assert spec_dict["info"]["title"] == "Workfloo API"


def test_client_requests_and_fake_responses_follow_the_spec(
    kiban: KibanRig, openapi: OpenAPI, spec_dict: dict[str, Any]
) -> None:
    exchanges: list[httpx.Response] = []
    _drive_every_operation(kiban, exchanges)
    table = _operation_matcher(spec_dict)
    covered: dict[str, set[int]] = {}
    for response in exchanges:
        request = response.request
        assert request.url.params.get("sandbox") == "true"
        operation = _operation_of(table, request.method, request.url.path)
        covered.setdefault(operation, set()).add(response.status_code)
        mock_request = MockRequest(
            SPEC_HOST,
            request.method,
            request.url.path,
            args=dict(request.url.params),
            headers=dict(request.headers),
            data=request.content,
            content_type=request.headers.get("content-type", "application/json"),
        )
        openapi.validate_request(mock_request)
        mock_response = MockResponse(
            response.content,
            status_code=response.status_code,
            headers=dict(response.headers),
            content_type=response.headers.get("content-type", "application/json"),
        )
        openapi.validate_response(mock_request, mock_response)
    assert set(covered) == CLIENT_OPERATIONS
    for operation in ("validateWorkflooOtp", "fallbackWorkflooOtp", "executeWorkflooDocument"):
        assert min(covered[operation]) >= 400  # the fake's definition has no such step
    assert {200, 400} <= covered["sendWorkflooNip"]
    assert {200, 404} <= covered["executeWorkfloo"]
    assert {200, 400} <= covered["validateWorkflooNip"]


def test_webhook_bodies_are_workfloo_status_objects(kiban: KibanRig, spec_dict: dict[str, Any]) -> None:
    _drive_every_operation(kiban, [])
    assert kiban.state.wait_idle()
    validator = OAS30Validator(
        {
            "$ref": "#/components/schemas/controller_workfloo_model.WorkflooStatus",
            "components": spec_dict["components"],
        }
    )
    hooks = kiban.sink.on("/v1/kiban/status")
    assert len(hooks) > 5
    for hook in hooks:
        validator.validate(hook.body)
    event = OAS30Validator(
        {
            "$ref": "#/components/schemas/controller_workfloo_model.Event",
            "components": spec_dict["components"],
        }
    )
    for nip in kiban.sink.on("/nip-events"):  # the NIP callback carries an Event-like record
        event.validate({"status": nip.body["event"], "date": nip.body["date"]})


def test_the_validator_rejects_a_wrong_body(openapi: OpenAPI) -> None:
    """Guards the contract test itself: a mistyped field must fail."""
    request = MockRequest(SPEC_HOST, "GET", "/api/v1/workfloo/status/abc", headers={"x-api-key": "k"})
    with pytest.raises(OpenAPIError, match="not valid for schema"):
        openapi.validate_response(request, MockResponse(b'{"id": "x", "status": 5}', status_code=200))


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("PATCH", "/api/v1/workfloo/abc/nip/validate", {"x-api-key": "k"}, b"{}"),  # nip is required
        ("POST", "/api/v1/workfloo", {"x-api-key": "k"}, b'{"scenarioId": "a"}'),  # idWorkflooDefinition
        ("GET", "/api/v1/workfloo/status/abc", {}, b""),  # no x-api-key
    ],
)
def test_the_validator_rejects_a_wrong_request(
    openapi: OpenAPI, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(OpenAPIError):
        openapi.validate_request(MockRequest(SPEC_HOST, method, path, headers=headers, data=body))
