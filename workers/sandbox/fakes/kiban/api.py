"""The Kiban workfloo API of the fake (``kiban-workfloo.openapi.yaml``): every handler answers as the
sandbox does, including its 401-before-404 order and empty-bodied 404s, and drives ``FakeKibanState``."""

from __future__ import annotations

import base64
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.sandbox.fakes.kiban.state import (
    EVENT_NODE,
    EVENT_STARTED,
    RECOVERABLE_NIP_ERROR,
    REQUIRED_FORM_FIELDS,
    SANDBOX_NIP,
    UNKNOWN_DESTINATION,
    FakeExecution,
    FakeKibanState,
    object_id,
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_REQUIRED = "REQUIRED_FIELD_ERROR; EMPTY_ERROR; can't be empty"


def _envelope(type_error: str, message: str = "", errors: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"typeError": type_error, "errors": dict(errors) if errors else None, "errorMessage": message}


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status)


def _empty(status: int) -> Response:
    return Response(status_code=status)


def api_routes(state: FakeKibanState, api_key: str) -> list[Route]:
    """The API routes, checking ``x-api-key`` against ``api_key``; each answer goes to ``state.requests``."""

    def authorised(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("x-api-key", ""), api_key)

    def record(request: Request, route: str, response: Response) -> Response:
        with state.lock:
            state.requests.append((request.method, route, response.status_code))
        return response

    async def read_object(
        request: Request, *, required: bool
    ) -> tuple[dict[str, Any] | None, Response | None]:
        try:
            raw = await request.body()
        except ClientDisconnect:
            return None, _empty(400)
        if not raw.strip():
            if required:
                return None, _json(_envelope("INVALID_BODY", "request body is required"), 400)
            return None, None
        try:
            data = json.loads(raw)
        except ValueError:
            return None, _json(_envelope("INVALID_BODY", "request body is not valid JSON"), 400)
        if not isinstance(data, dict):
            return None, _json(_envelope("INVALID_BODY", "request body must be a JSON object"), 400)
        return data, None

    def lookup(execution_id: str) -> FakeExecution | None:
        return state.executions.get(execution_id)

    def find(request: Request, route: str) -> FakeExecution | Response:
        """The execution named in the path, or what the real API answers: 401 without the key (checked
        first), 404 with an empty body for an unknown id."""
        if not authorised(request):
            return record(request, route, _empty(401))
        ex = lookup(request.path_params["id"])
        return ex if ex is not None else record(request, route, _empty(404))

    def form_errors(fields: Mapping[str, Any]) -> dict[str, str]:
        errors = {}
        for name in REQUIRED_FORM_FIELDS:
            value = fields.get(name)
            if not isinstance(value, str) or not value.strip():
                errors[name] = _REQUIRED
        email = fields.get("email")
        if "email" not in errors and isinstance(email, str) and not _EMAIL.match(email):
            errors["email"] = "FORMAT_ERROR; invalid email format"
        return errors

    def phone_errors(body: Mapping[str, Any] | None) -> dict[str, str]:
        if not body:
            return {}
        has_cc, has_phone = bool(body.get("countryCode")), bool(body.get("phoneNumber"))
        if has_cc != has_phone:
            missing = "countryCode" if not has_cc else "phoneNumber"
            return {missing: "REQUIRED_FIELD_ERROR; countryCode and phoneNumber go together"}
        return {}

    # --- API routes --------------------------------------------------------------------------

    async def execute(request: Request) -> Response:
        route = "executeWorkfloo"
        if not authorised(request):
            return record(request, route, _empty(401))
        body, error = await read_object(request, required=True)
        if error is not None or body is None:
            return record(request, route, error or _empty(400))
        definition_id = body.get("idWorkflooDefinition")
        if not isinstance(definition_id, str) or not definition_id:
            return record(
                request,
                route,
                _json(_envelope("REQUIRED_FIELDS", "", {"idWorkflooDefinition": "required"}), 400),
            )
        if state.definitions is not None and definition_id not in state.definitions:
            return record(request, route, _empty(404))
        scenario_id = body.get("scenarioId") or state.default_scenario
        if not scenario_id:
            return record(
                request, route, _json(_envelope("ELEMENT_NOT_EXIST_ERROR", "scenarioId not found"), 400)
            )
        scenario = state.scenarios.get(str(scenario_id))
        if scenario is None:
            return record(
                request, route, _json(_envelope("ELEMENT_NOT_EXIST_ERROR", "scenarioId not found"), 404)
            )
        form = body.get("form")
        if form is not None and not isinstance(form, dict):
            return record(request, route, _json({"form": "FORMAT_ERROR; must be an object"}, 400))
        if form:
            errors = form_errors(form)
            if errors:
                return record(request, route, _json(errors, 400))
        callback_url = body.get("callbackUrl") or None
        callback_key = body.get("callbackXApiKey") or None
        with state.lock:
            state._unykoo += 1
            ex = FakeExecution(
                id=object_id(),
                definition_id=definition_id,
                scenario=scenario,
                scenario_id=str(scenario_id),
                callback_url=str(callback_url) if callback_url else None,
                callback_api_key=str(callback_key) if callback_key else None,
                id_unykoo=state._unykoo,
            )
            state.executions[ex.id] = ex
            state.notify(ex, EVENT_STARTED)
            if form:
                ex.form = dict(form)
                state.enter_link(ex)
            return record(request, route, _json({"id": ex.id, "idUnykoo": ex.id_unykoo}))

    async def submit_form(request: Request) -> Response:
        route = "executeWorkflooForm"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        body, error = await read_object(request, required=True)
        if error is not None or body is None:
            return record(request, route, error or _empty(400))
        with state.lock:
            if ex.is_terminal or ex.node_type != "FORM":
                return record(
                    request, route, _json(_envelope("STATE_CONFLICT", f"current node is {ex.node_type}"), 409)
                )
            errors = form_errors(body)
            if errors:
                return record(request, route, _json(errors, 400))
            ex.form = dict(body)
            state.enter_link(ex)
        return record(request, route, _empty(200))

    def link_state_error(ex: FakeExecution) -> Response | None:
        if ex.is_terminal or ex.node_type != "LINK":
            return _json(_envelope("STEP_ERROR", f"current node is {ex.node_type}, not a NIP step"), 400)
        return None

    def start_delivery(ex: FakeExecution, *, new_phone: bool) -> None:
        ex.nip_deliveries += 1
        ex.delivery_in_flight = True
        if ex.scenario == "nip-invalid" and not new_phone:
            outcome, message = "ERROR", UNKNOWN_DESTINATION
        elif ex.scenario == "nip-error" and ex.nip_deliveries == 1:
            outcome, message = "ERROR", RECOVERABLE_NIP_ERROR
        else:
            outcome, message = "SUCCESS", None
        state.nip_event(ex, "PENDING")
        state.schedule(state.run_delivery(ex, outcome, message))

    async def send_nip(request: Request) -> Response:
        route = "sendWorkflooNip"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        body, error = await read_object(request, required=False)
        if error is not None:
            return record(request, route, error)
        with state.lock:
            problem = link_state_error(ex)
            if problem is not None:
                return record(request, route, problem)
            if ex.phase != "CREATE_ACCOUNT":
                return record(
                    request, route, _json(_envelope("NIP_ALREADY_SENT", "NIP previously sent"), 400)
                )
            errors = phone_errors(body)
            if errors:
                return record(request, route, _json(errors, 400))
            ex.nip_url_callback = request.headers.get("urlCallback") or None
            ex.nip_api_key = request.headers.get("xApiKeyCallback") or None
            state.set_phase(ex, "VALIDATE")
            start_delivery(ex, new_phone=bool(body and body.get("phoneNumber")))
        return record(request, route, _empty(200))

    async def resend_nip(request: Request) -> Response:
        route = "resendWorkflooNip"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        body, error = await read_object(request, required=False)
        if error is not None:
            return record(request, route, error)
        with state.lock:
            problem = link_state_error(ex)
            if problem is not None:
                return record(request, route, problem)
            if ex.phase not in ("VALIDATE", "VALIDATE_2"):
                return record(request, route, _json(_envelope("STEP_ERROR", "NIP has not been sent"), 400))
            errors = phone_errors(body)
            if errors:
                return record(request, route, _json(errors, 400))
            if request.headers.get("urlCallback"):
                ex.nip_url_callback = request.headers["urlCallback"]
            if request.headers.get("xApiKeyCallback"):
                ex.nip_api_key = request.headers["xApiKeyCallback"]
            new_phone = bool(body and body.get("phoneNumber"))
            start_delivery(ex, new_phone=new_phone)
            answer: dict[str, Any] = {"phase": ex.phase or "", "nipType": "SMS"}
            if body and new_phone:
                answer["countryCode"] = str(body["countryCode"])
                answer["phoneNumber"] = str(body["phoneNumber"])
        return record(request, route, _json(answer))

    async def validate_nip(request: Request) -> Response:
        route = "validateWorkflooNip"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        body, error = await read_object(request, required=True)
        if error is not None or body is None:
            return record(request, route, error or _empty(400))
        nip = body.get("nip")
        if not isinstance(nip, str) or not nip:
            return record(request, route, _json({"nip": _REQUIRED}, 400))
        with state.lock:
            problem = link_state_error(ex)
            if problem is not None:
                return record(request, route, problem)
            if ex.phase not in ("VALIDATE", "VALIDATE_2"):
                return record(request, route, _json(_envelope("STEP_ERROR", f"NIP phase is {ex.phase}"), 400))
            last = ex.link_events[-1]["status"] if ex.link_events else None
            if last == "ERROR":
                return record(
                    request, route, _json(_envelope("NIP_NOT_DELIVERED", "the NIP was not delivered"), 400)
                )
            if not hmac.compare_digest(nip, SANDBOX_NIP):
                return record(request, route, _json({"nip": "INVALID_NIP; the NIP is not valid"}, 400))
            ex.validations += 1
            if ex.phase == "VALIDATE":
                state.set_phase(ex, "VALIDATE_2")
                return record(request, route, _json({"phase": "VALIDATE_2"}))
            ex.phase = "VALIDATED"
            state._sync_link_node(ex)
            ex.node_type, ex.node_id, ex.node_name = (
                "LINK_PROCESSING",
                object_id(),
                "Consulta Buró de Crédito",
            )
            state._touch(ex)
            state.notify(ex, EVENT_NODE)
            state.schedule(state.run_decision(ex))
        return record(request, route, _json({"phase": "VALIDATED"}))

    async def get_status(request: Request) -> Response:
        route = "getWorkflooStatus"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        with state.lock:
            return record(request, route, _json(state.status_body(ex)))

    async def get_detail(request: Request) -> Response:
        route = "getWorkfloo"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        with state.lock:
            return record(request, route, _json(state.detail_body(ex)))

    async def get_file(request: Request) -> Response:
        route = "getWorkflooFile"
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        node_id, name = request.query_params.get("nodeId"), request.query_params.get("name")
        if not node_id or not name:
            return record(
                request, route, _json({"nodeId": _REQUIRED} if not node_id else {"name": _REQUIRED}, 400)
            )
        with state.lock:
            for node in ex.nodes:
                files = node.get("files") or []
                if node.get("id") == node_id and any(f.get("value") == name for f in files):
                    content = base64.b64encode(f"%PDF-1.4 fake {name} {ex.id}".encode()).decode()
                    return record(request, route, _json({"fileBase64": content}))
        return record(request, route, _empty(404))

    async def not_waiting(request: Request, route: str, status: int, body: dict[str, Any]) -> Response:
        ex = find(request, route)
        if isinstance(ex, Response):
            return ex
        return record(request, route, _json(body, status))

    async def validate_otp(request: Request) -> Response:
        route = "validateWorkflooOtp"
        if not authorised(request):
            return record(request, route, _empty(401))
        if lookup(request.path_params["id"]) is None:
            return record(request, route, _empty(404))
        data, error = await read_object(request, required=True)
        if error is not None or data is None:
            return record(request, route, error or _empty(400))
        if not data.get("token"):
            return record(request, route, _json({"error": "token is required", "remainingRetries": 3}, 400))
        # This definition has no verification step: nothing is awaiting a code.
        return record(request, route, _json({"error": "no verification code pending"}, 403))

    async def otp_fallback(request: Request) -> Response:
        return await not_waiting(
            request, "fallbackWorkflooOtp", 403, {"error": "no verification code pending"}
        )

    async def submit_document(request: Request) -> Response:
        return await not_waiting(
            request,
            "executeWorkflooDocument",
            409,
            _envelope("STATE_CONFLICT", "current node is not DOCUMENT"),
        )

    async def review(request: Request) -> Response:
        return await not_waiting(
            request,
            "reviewWorkflooValidation",
            409,
            _envelope("STATE_CONFLICT", "no VALIDATION node in REVIEW"),
        )

    async def correction(request: Request) -> Response:
        return await not_waiting(
            request,
            "submitWorkflooCorrection",
            409,
            _envelope("STATE_CONFLICT", "no VALIDATION node in CORRECTION"),
        )

    return [
        Route("/api/v1/workfloo", execute, methods=["POST"]),
        Route("/api/v1/workfloo/", execute, methods=["POST"]),
        Route("/api/v1/workfloo/status/{id}", get_status, methods=["GET"]),
        Route("/api/v1/workfloo/{id}", get_detail, methods=["GET"]),
        Route("/api/v1/workfloo/{id}/form", submit_form, methods=["POST"]),
        Route("/api/v1/workfloo/{id}/document", submit_document, methods=["POST"]),
        Route("/api/v1/workfloo/{id}/file", get_file, methods=["GET"]),
        Route("/api/v1/workfloo/{id}/nip/send", send_nip, methods=["PATCH"]),
        Route("/api/v1/workfloo/{id}/nip/resend", resend_nip, methods=["PATCH"]),
        Route("/api/v1/workfloo/{id}/nip/validate", validate_nip, methods=["PATCH"]),
        Route("/api/v1/workfloo/{id}/otp/validate", validate_otp, methods=["PATCH"]),
        Route("/api/v1/workfloo/{id}/otp/fallback", otp_fallback, methods=["PATCH"]),
        Route("/api/v1/workfloo/{id}/review", review, methods=["POST"]),
        Route("/api/v1/workfloo/{id}/correction", correction, methods=["POST"]),
    ]
