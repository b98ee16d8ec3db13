"""The fake Kiban's state machine, scenarios, callbacks, rejections and fault knobs."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from workers.core.errors import KibanValidationError
from workers.sandbox.fakes.kiban import create_app
from workers.sandbox.fakes.kiban.state import UNKNOWN_DESTINATION
from workers.sandbox.wait import holds_within

if TYPE_CHECKING:
    from tests.support.vendor_rigs import KibanRig

FORM = {"email": "ana@example.com", "first_name": "Ana", "last_name_1": "Lopez"}
KEY = {"x-api-key": "kiban-test-key"}


def _start(kiban: KibanRig, scenario: str) -> str:
    client = kiban.make_client()
    execution_id = client.execute(
        "def-1",
        scenario_id=scenario,
        callback_url=kiban.sink.url + "/v1/kiban/status",
        callback_api_key="cb-key",
    )
    client.submit_form(execution_id, FORM)
    client.send_nip(
        execution_id,
        url_callback=kiban.sink.url + f"/v1/kiban/executions/{execution_id}/nip-events",
        api_key_callback="nip-key",
    )
    return execution_id


def _nip_events(kiban: KibanRig, count: int) -> list[str]:
    return [r.body["event"] for r in kiban.sink.wait("/nip-events", count)]


def test_status_webhooks_carry_key_unique_ids_and_types(kiban: KibanRig) -> None:
    execution_id = _start(kiban, "approved")
    kiban.make_client().validate_nip_twice(execution_id, "123456")
    assert kiban.state.wait_for_status(execution_id, {"SUCCESS"})
    assert kiban.state.wait_idle()
    hooks = kiban.sink.on("/v1/kiban/status")
    assert all(h.headers["x-api-key"] == "cb-key" for h in hooks)
    ids = [h.headers["x-kiban-event-id"] for h in hooks]
    assert len(ids) == len(set(ids)) == kiban.state.execution(execution_id).webhooks_sent
    types = [h.headers["x-kiban-event-type"] for h in hooks]
    assert types[0] == "workfloo.started" and types[-1] == "workfloo.finished"
    assert hooks[-1].body["status"] == "SUCCESS" and hooks[-1].body["id"] == execution_id
    nodes = [h.body.get("currentNodeType") for h in hooks]
    assert {"FORM", "LINK", "LINK_PROCESSING"} <= set(nodes)


def test_nip_callbacks_use_the_nip_key_and_link_id(kiban: KibanRig) -> None:
    execution_id = _start(kiban, "approved")
    events = kiban.sink.wait("/nip-events", 3)
    assert [e.body["event"] for e in events] == ["PENDING", "SENT", "SUCCESS"]
    link_id = kiban.state.execution(execution_id).link_id
    assert all(e.headers["x-api-key"] == "nip-key" and e.body["linkId"] == link_id for e in events)
    assert all(e.path == f"/v1/kiban/executions/{execution_id}/nip-events" for e in events)


def test_end_of_workfloo_callback(kiban: KibanRig) -> None:
    execution_id = _start(kiban, "approved")
    kiban.make_client().validate_nip_twice(execution_id, "123456")
    finished = kiban.sink.wait("/finished", 1)
    assert finished[0].path == f"/v1/kiban/executions/{execution_id}/finished"
    assert finished[0].headers["x-api-key"] == "end-key"
    assert finished[0].body["status"] == "SUCCESS"
    assert holds_within(lambda: kiban.state.execution(execution_id).end_callback_status == 200)
    api_node = kiban.make_client().get_detail(execution_id).nodes_of_type("API")[0]
    assert api_node.api_data is not None and api_node.api_data["response"]["httpCode"] == 200


def test_nip_error_then_resend_succeeds(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _start(kiban, "nip-error")
    assert _nip_events(kiban, 3) == ["PENDING", "SENT", "ERROR"]
    status = client.get_status(execution_id)
    assert status.link is not None and status.link.send_error is not None
    assert status.link.send_error.recoverable is True
    with pytest.raises(KibanValidationError):  # the NIP never arrived
        client.validate_nip(execution_id, "123456")
    client.resend_nip(execution_id)
    assert _nip_events(kiban, 6)[3:] == ["PENDING", "SENT", "SUCCESS"]
    assert client.validate_nip_twice(execution_id, "123456") == "VALIDATED"
    assert kiban.state.wait_for_status(execution_id, {"SUCCESS"})


def test_nip_invalid_reports_unknown_destination(kiban: KibanRig) -> None:
    client = kiban.make_client()
    execution_id = _start(kiban, "nip-invalid")
    events = kiban.sink.wait("/nip-events", 3)
    assert events[-1].body == {
        "event": "ERROR",
        "date": events[-1].body["date"],
        "linkId": kiban.state.execution(execution_id).link_id,
        "errorMessage": UNKNOWN_DESTINATION,
    }
    status = client.get_status(execution_id)
    assert status.link is not None and status.link.send_error is not None
    assert status.link.send_error.recoverable is False
    client.resend_nip(execution_id)  # same number: fails again
    assert _nip_events(kiban, 6)[-1] == "ERROR"


@pytest.mark.parametrize(("scenario", "final"), [("abandoned", "ABANDONED"), ("error", "ERROR")])
def test_terminal_scenarios(kiban: KibanRig, scenario: str, final: str) -> None:
    client = kiban.make_client()
    execution_id = _start(kiban, scenario)
    _nip_events(kiban, 3)
    client.validate_nip_twice(execution_id, "123456")
    assert kiban.state.wait_for_status(execution_id, {final})
    detail = client.get_detail(execution_id)
    assert detail.status == final and detail.is_terminal and detail.ruleset_exit is None
    assert kiban.sink.wait("/finished", 1)[0].body["status"] == final


def test_manual_abandon_sets_cancelled_by(kiban: KibanRig) -> None:
    execution_id = kiban.make_client().execute("def-1", scenario_id="approved")
    response = httpx.post(f"{kiban.url}/_fake/executions/{execution_id}/abandon")
    assert response.json()["status"] == "ABANDONED"
    status = kiban.make_client().get_status(execution_id)
    assert status.is_terminal and status.cancelled_by


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/workfloo", {"idWorkflooDefinition": "d", "scenarioId": "approved"}),
        ("GET", "/api/v1/workfloo/status/abc", None),
        ("PATCH", "/api/v1/workfloo/abc/nip/send", None),
    ],
)
def test_missing_key_is_401_with_empty_body(kiban: KibanRig, method: str, path: str, body: object) -> None:
    response = httpx.request(method, kiban.url + path, json=body)
    assert response.status_code == 401 and response.content == b""


def test_unknown_id_is_404_empty(kiban: KibanRig) -> None:
    response = httpx.get(kiban.url + "/api/v1/workfloo/status/ffffffffffffffffffffffff", headers=KEY)
    assert response.status_code == 404 and response.content == b""


def test_missing_definition_is_required_fields_envelope(kiban: KibanRig) -> None:
    response = httpx.post(kiban.url + "/api/v1/workfloo", json={"scenarioId": "approved"}, headers=KEY)
    assert response.status_code == 400
    assert response.json() == {
        "typeError": "REQUIRED_FIELDS",
        "errors": {"idWorkflooDefinition": "required"},
        "errorMessage": "",
    }


def test_missing_scenario_is_400_and_unknown_is_404(kiban: KibanRig) -> None:
    missing = httpx.post(kiban.url + "/api/v1/workfloo", json={"idWorkflooDefinition": "d"}, headers=KEY)
    unknown = httpx.post(
        kiban.url + "/api/v1/workfloo", json={"idWorkflooDefinition": "d", "scenarioId": "nope"}, headers=KEY
    )
    assert missing.status_code == 400 and unknown.status_code == 404
    expected = {
        "typeError": "ELEMENT_NOT_EXIST_ERROR",
        "errors": None,
        "errorMessage": "scenarioId not found",
    }
    assert missing.json() == expected and unknown.json() == expected


def test_bad_json_is_400(kiban: KibanRig) -> None:
    response = httpx.post(
        kiban.url + "/api/v1/workfloo", content=b"{nope", headers={**KEY, "content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["typeError"] == "INVALID_BODY"


def test_empty_form_lists_required_fields(kiban: KibanRig) -> None:
    execution_id = kiban.make_client().execute("def-1", scenario_id="approved")
    response = httpx.post(f"{kiban.url}/api/v1/workfloo/{execution_id}/form", json={}, headers=KEY)
    assert response.status_code == 400
    assert set(response.json()) == {"email", "first_name", "last_name_1"}


# --- fault knobs -------------------------------------------------------------------------------


def test_faults_can_be_flipped_over_http(kiban: KibanRig) -> None:
    changed = httpx.post(kiban.url + "/_fake/faults", json={"fail_next": 2, "fail_status": 429})
    assert changed.json()["fail_next"] == 2
    codes = [httpx.get(kiban.url + "/api/v1/workfloo/status/x", headers=KEY).status_code for _ in range(3)]
    assert codes == [429, 429, 404]
    assert httpx.get(kiban.url + "/_fake/faults").json()["fail_next"] == 0
    bad = httpx.post(kiban.url + "/_fake/faults", json={"no_such_knob": 1})
    assert bad.status_code == 422 and "no_such_knob" in bad.json()["detail"]


def test_dropped_callbacks_are_recorded_not_sent(kiban: KibanRig) -> None:
    kiban.state.faults.update({"drop_callbacks_next": 1})
    kiban.make_client().execute(
        "def-1", scenario_id="approved", callback_url=kiban.sink.url + "/v1/kiban/status"
    )
    assert kiban.state.wait_idle()
    [record] = kiban.state.deliveries_of("status")
    assert record.dropped and kiban.sink.on("/v1/kiban/status") == []


def test_duplicate_callbacks_repeat_the_same_event_id(kiban: KibanRig) -> None:
    kiban.state.faults.update({"duplicate_callbacks": 3})
    kiban.make_client().execute(
        "def-1", scenario_id="approved", callback_url=kiban.sink.url + "/v1/kiban/status"
    )
    hooks = kiban.sink.wait("/v1/kiban/status", 3)
    assert len(hooks) == 3 and len({h.headers["x-kiban-event-id"] for h in hooks}) == 1


def test_deliveries_since_returns_only_newer_records(kiban: KibanRig) -> None:
    kiban.make_client().execute(
        "def-1", scenario_id="approved", callback_url=kiban.sink.url + "/v1/kiban/status"
    )
    assert kiban.state.wait_idle()
    every = httpx.get(kiban.url + "/_fake/deliveries").json()
    assert len(every) == 1
    assert httpx.get(kiban.url + "/_fake/deliveries", params={"since": 0}).json() == every
    assert httpx.get(kiban.url + "/_fake/deliveries", params={"since": len(every)}).json() == []
    assert httpx.get(kiban.url + "/_fake/deliveries", params={"since": "x"}).status_code == 400


def test_drop_probability_one_drops_everything(kiban: KibanRig) -> None:
    kiban.state.faults.update({"drop_callbacks_probability": 1.0})
    _start(kiban, "approved")
    assert kiban.state.wait_idle()
    assert kiban.sink.received == [] and all(d.dropped for d in kiban.state.deliveries)


def test_hung_callback_target_does_not_block_requests(serve) -> None:  # type: ignore[no-untyped-def]
    """Requests are answered while a callback to a target that never replies is still in flight."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    app = create_app("k", callback_timeout=30.0)
    server = serve(app)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    body = {"idWorkflooDefinition": "d", "scenarioId": "approved", "callbackUrl": url}
    try:
        for _ in range(3):
            assert httpx.post(
                server.url + "/api/v1/workfloo", json=body, headers={"x-api-key": "k"}
            ).is_success
        assert not app.state.fake.sender.idle  # the first callback is still waiting for its answer
        assert app.state.fake.deliveries == []
    finally:
        silent.close()
    assert app.state.fake.wait_idle(10.0)


def test_callback_delivery_is_bounded_by_its_timeout(serve) -> None:  # type: ignore[no-untyped-def]
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    app = create_app("k", callback_timeout=0.2)
    server = serve(app)
    body = {
        "idWorkflooDefinition": "d",
        "scenarioId": "approved",
        "callbackUrl": f"http://127.0.0.1:{silent.getsockname()[1]}/hook",
    }
    try:
        httpx.post(server.url + "/api/v1/workfloo", json=body, headers={"x-api-key": "k"})
        assert app.state.fake.wait_idle(10.0)
        assert [d.error for d in app.state.fake.deliveries] == ["ReadTimeout"]
    finally:
        silent.close()


def test_runs_as_a_process(sink) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "workers.sandbox.fakes.kiban",
        "--port",
        str(port),
        "--api-key",
        "proc-key",
        "--end-callback-url",
        sink.url + "/v1/kiban/executions/{execution_id}/finished",
        "--faults",
        '{"fail_next": 1, "fail_status": 503}',
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        assert holds_within(lambda: _up(url), timeout=15), process.stderr.read() if process.stderr else ""
        body = {"idWorkflooDefinition": "d", "scenarioId": "approved"}
        first = httpx.post(url + "/api/v1/workfloo", json=body, headers={"x-api-key": "proc-key"})
        assert first.status_code == 503  # the --faults knob
        response = httpx.post(
            url + "/api/v1/workfloo",
            json={"idWorkflooDefinition": "d", "scenarioId": "approved"},
            headers={"x-api-key": "proc-key"},
        )
        assert response.status_code == 200 and len(response.json()["id"]) == 24
        assert httpx.get(url + "/_fake/executions").json()[0]["scenario"] == "approved"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/_fake/faults", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
