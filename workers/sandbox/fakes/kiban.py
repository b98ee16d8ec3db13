"""Fake Kiban workfloo API: the sandbox of ``kiban-workfloo.openapi.yaml`` with the integration guide's
state machine, for tests and the demo (no network).

    execute -> FORM -> (form) LINK phase CREATE_ACCOUNT -> nip/send -> VALIDATE
      (NIP delivery callbacks PENDING -> SENT -> SUCCESS | ERROR to ``urlCallback``)
    -> nip/validate -> VALIDATE_2 -> nip/validate -> VALIDATED -> LINK_PROCESSING (bureau query)
    -> after ``decision_delay`` seconds: SUCCESS (ruleset exit APPROVED / REJECTED), ABANDONED or ERROR.

Status webhooks (POST, body = status object, ``x-api-key`` = ``callbackXApiKey``, ``x-kiban-event-id``,
``x-kiban-event-type``) go to the execute ``callbackUrl`` on every change, and an end-of-workfloo
API-step callback goes to ``end_callback_url`` (a template with ``{execution_id}``) when it ends.
The scenario (``scenarioId``) picks the outcome: see ``SCENARIOS``.

``create_app(...)`` returns a Starlette app whose ``app.state.fake`` is the inspectable
``FakeKibanState``. Run it as a process with ``python -m workers.sandbox.fakes.kiban --port N ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hmac
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.sandbox.fakes.delivery import CallbackSender, Delivery, mask_headers
from workers.sandbox.fakes.faults import FaultMiddleware, Faults, fault_routes
from workers.sandbox.wait import holds_within

SANDBOX_NIP = "123456"
SCENARIOS = ("approved", "rejected", "nip-error", "nip-invalid", "abandoned", "error")
REQUIRED_FORM_FIELDS = ("email", "first_name", "last_name_1")
OPTIONAL_FORM_FIELDS = ("second_name", "last_name_2", "country_code", "phone_number", "rfc_pf", "referrer")
TERMINAL = frozenset({"SUCCESS", "ERROR", "ABANDONED"})

RECOVERABLE_NIP_ERROR = "The message could not be delivered to the destination. Please try again."
UNKNOWN_DESTINATION = "The destination number you are trying to reach is unknown and may no longer exist."

# x-kiban-event-type values: the real ones are UNCONFIRMED (assumption K1); the bridge routes on them only
# loosely and always reconciles with GET status.
EVENT_STARTED = "workfloo.started"
EVENT_NODE = "workfloo.node_changed"
EVENT_PHASE = "workfloo.nip_phase_changed"
EVENT_NIP = "workfloo.nip_event"
EVENT_FINISHED = "workfloo.finished"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_REQUIRED = "REQUIRED_FIELD_ERROR; EMPTY_ERROR; can't be empty"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _oid() -> str:
    return secrets.token_hex(12)


def _envelope(type_error: str, message: str = "", errors: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"typeError": type_error, "errors": dict(errors) if errors else None, "errorMessage": message}


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status)


def _empty(status: int) -> Response:
    return Response(status_code=status)


@dataclass
class FakeExecution:
    id: str
    definition_id: str
    scenario: str
    scenario_id: str
    callback_url: str | None
    callback_api_key: str | None
    id_unykoo: int
    status: str = "PROGRESS"
    node_type: str = "FORM"
    node_id: str = field(default_factory=_oid)
    node_name: str = "Formulario"
    phase: str | None = None
    form: dict[str, Any] = field(default_factory=dict)
    link_id: str = field(default_factory=_oid)
    link_events: list[dict[str, Any]] = field(default_factory=list)
    send_error: dict[str, Any] | None = None
    nip_url_callback: str | None = None
    nip_api_key: str | None = None
    nip_deliveries: int = 0
    delivery_in_flight: bool = False
    validations: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=_now)
    modified: str = field(default_factory=_now)
    cancelled_at: str | None = None
    cancelled_by: str | None = None
    webhooks_sent: int = 0
    end_callback_status: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class FakeKibanState:
    """Everything the fake knows, inspectable from tests (``app.state.fake``)."""

    def __init__(
        self,
        *,
        api_key: str,
        faults: Faults,
        sender: CallbackSender,
        scenarios: Mapping[str, str],
        definitions: Collection[str] | None,
        default_scenario: str | None,
        end_callback_url: str | None,
        end_callback_api_key: str | None,
        end_callback_key_header: str,
        end_callback_statuses: Collection[str],
        decision_delay: float,
        nip_event_delay: float,
        workfloo_name: str,
    ) -> None:
        self.api_key = api_key
        self.faults = faults
        self.sender = sender
        self.scenarios = dict(scenarios)
        self.definitions = set(definitions) if definitions is not None else None
        self.default_scenario = default_scenario
        self.end_callback_url = end_callback_url
        self.end_callback_api_key = end_callback_api_key
        self.end_callback_key_header = end_callback_key_header
        self.end_callback_statuses = set(end_callback_statuses)
        self.decision_delay = decision_delay
        self.nip_event_delay = nip_event_delay
        self.workfloo_name = workfloo_name
        self.lock = threading.RLock()
        self.executions: dict[str, FakeExecution] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, route, status) of every API request
        self._tasks: set[asyncio.Task[None]] = set()
        self._unykoo = 1000

    # --- inspection --------------------------------------------------------------------------

    def execution(self, execution_id: str) -> FakeExecution:
        with self.lock:
            return self.executions[execution_id]

    @property
    def deliveries(self) -> list[Any]:
        return self.sender.snapshot()

    def deliveries_of(self, kind: str, execution_id: str | None = None) -> list[Any]:
        return [
            d
            for d in self.sender.snapshot()
            if d.kind == kind and (execution_id is None or d.execution_id == execution_id)
        ]

    def wait_for_status(self, execution_id: str, statuses: Collection[str], timeout: float = 5.0) -> bool:
        return holds_within(
            lambda: execution_id in self.executions and self.executions[execution_id].status in statuses,
            timeout,
        )

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no state change is scheduled and every queued callback went out."""
        return holds_within(lambda: not self._tasks and self.sender.idle, timeout)

    def reset(self) -> None:
        with self.lock:
            for task in list(self._tasks):
                task.get_loop().call_soon_threadsafe(task.cancel)
            self.executions.clear()
            self.requests.clear()
        self.sender.clear()
        self.faults.reset()

    # --- views -------------------------------------------------------------------------------

    def status_body(self, ex: FakeExecution) -> dict[str, Any]:
        """``WorkflooStatus`` of an execution (also the webhook body)."""
        body: dict[str, Any] = {"id": ex.id, "name": self.workfloo_name, "status": ex.status}
        if not ex.is_terminal:
            body.update(
                {
                    "currentNodeId": ex.node_id,
                    "currentNodeName": ex.node_name,
                    "currentNodeType": ex.node_type,
                }
            )
        if ex.node_type == "FORM" and not ex.is_terminal:
            fields = [
                {
                    "id": name,
                    "name": name.replace("_", " ").capitalize(),
                    "required": name in REQUIRED_FORM_FIELDS,
                    "predefined": False,
                    "section": "Datos personales",
                    "fieldMetadata": {"type": "email" if name == "email" else "text"},
                }
                for name in (*REQUIRED_FORM_FIELDS, *OPTIONAL_FORM_FIELDS)
            ]
            body["form"] = {"formFieldSection": [{"section": "Datos personales", "fields": fields}]}
        if ex.node_type == "LINK" and not ex.is_terminal:
            link: dict[str, Any] = {
                "key": ex.link_id,
                "keyTypeNode": "NIP",
                "phase": ex.phase or "",
                "nipType": "SMS",
                "companyName": "Fake Lender",
                "events": copy.deepcopy(ex.link_events),
            }
            if ex.send_error:
                link["sendError"] = dict(ex.send_error)
            body["link"] = link
        if ex.cancelled_at:
            body["cancelledAt"] = ex.cancelled_at
            body["cancelledBy"] = ex.cancelled_by or ""
        return body

    def detail_body(self, ex: FakeExecution) -> dict[str, Any]:
        """``WorkflooResume``: the history as ``nodes``."""
        body: dict[str, Any] = {
            "id": ex.id,
            "idUnykoo": ex.id_unykoo,
            "name": self.workfloo_name,
            "status": ex.status,
            "created": ex.created,
            "modified": ex.modified,
            "origin": "API",
            "ipOrigin": "127.0.0.1",
            "labels": [],
            "sceneryId": ex.scenario_id,
            "sceneryName": ex.scenario,
            "nodes": copy.deepcopy(ex.nodes),
        }
        if ex.cancelled_at:
            body["cancelledAt"] = ex.cancelled_at
            body["cancelledBy"] = ex.cancelled_by or ""
        return body

    def summary(self, ex: FakeExecution) -> dict[str, Any]:
        return {
            "id": ex.id,
            "scenario": ex.scenario,
            "status": ex.status,
            "current_node_type": ex.node_type,
            "phase": ex.phase,
            "nip_deliveries": ex.nip_deliveries,
            "link_events": [e["status"] for e in ex.link_events],
            "webhooks_sent": ex.webhooks_sent,
            "end_callback_status": ex.end_callback_status,
        }

    # --- transitions (call with the lock held) -----------------------------------------------

    def _touch(self, ex: FakeExecution) -> None:
        ex.modified = _now()

    def notify(self, ex: FakeExecution, event_type: str) -> None:
        """Queue a status webhook to the execute ``callbackUrl`` (assumption K1)."""
        if not ex.callback_url:
            return
        headers = {
            "content-type": "application/json",
            "x-kiban-event-id": f"evt_{secrets.token_hex(12)}",
            "x-kiban-event-type": event_type,
        }
        if ex.callback_api_key:
            headers["x-api-key"] = ex.callback_api_key
        ex.webhooks_sent += 1
        self.sender.submit(
            Delivery("status", ex.callback_url, headers, self.status_body(ex), execution_id=ex.id)
        )

    def enter_link(self, ex: FakeExecution) -> None:
        ex.nodes.append(
            {
                "id": ex.node_id,
                "name": ex.node_name,
                "type": "FORM",
                "created": ex.created,
                "modified": _now(),
                "form": {"fields": dict(ex.form)},
            }
        )
        ex.node_type, ex.node_id, ex.node_name, ex.phase = (
            "LINK",
            _oid(),
            "NIP Buró de Crédito",
            "CREATE_ACCOUNT",
        )
        ex.nodes.append(self._link_node(ex))
        self._touch(ex)
        self.notify(ex, EVENT_NODE)

    def _link_node(self, ex: FakeExecution) -> dict[str, Any]:
        return {
            "id": ex.node_id,
            "name": ex.node_name,
            "type": "LINK",
            "created": _now(),
            "modified": _now(),
            "link": {"key": ex.link_id, "phase": ex.phase or "", "events": []},
        }

    def _sync_link_node(self, ex: FakeExecution) -> None:
        for node in ex.nodes:
            if node.get("type") == "LINK" and node.get("link", {}).get("key") == ex.link_id:
                node["link"] = {
                    "key": ex.link_id,
                    "phase": ex.phase or "",
                    "events": copy.deepcopy(ex.link_events),
                }
                node["modified"] = _now()

    def set_phase(self, ex: FakeExecution, phase: str) -> None:
        ex.phase = phase
        self._sync_link_node(ex)
        self._touch(ex)
        self.notify(ex, EVENT_PHASE)

    def nip_event(self, ex: FakeExecution, status: str, error_message: str | None = None) -> None:
        """Append a NIP delivery event, post it to ``urlCallback`` (assumption K2) and notify."""
        event: dict[str, Any] = {"status": status, "date": _now()}
        if error_message:
            event["errorMessage"] = error_message
        ex.link_events.append(event)
        self._sync_link_node(ex)
        self._touch(ex)
        if ex.nip_url_callback:
            payload: dict[str, Any] = {"event": status, "date": event["date"], "linkId": ex.link_id}
            if error_message:
                payload["errorMessage"] = error_message
            headers = {"content-type": "application/json"}
            if ex.nip_api_key:
                headers["x-api-key"] = ex.nip_api_key
            self.sender.submit(Delivery("nip", ex.nip_url_callback, headers, payload, execution_id=ex.id))
        self.notify(ex, EVENT_NIP)

    def finish(self, ex: FakeExecution) -> None:
        """Bureau query and decision; terminal status by scenario; end-of-workfloo callback."""
        if ex.is_terminal:
            return
        scenario = ex.scenario
        bureau_id = _oid()
        if scenario == "error":
            ex.nodes.append(
                {
                    "id": bureau_id,
                    "name": "Consulta Buró de Crédito",
                    "type": "LINK",
                    "created": _now(),
                    "modified": _now(),
                    "detail": {
                        "status": "ERROR",
                        "httpCode": 500,
                        "errorMessage": "Credit bureau query failed",
                        "idWorkfloo": ex.id,
                    },
                }
            )
            ex.status = "ERROR"
        elif scenario == "abandoned":
            ex.status = "ABANDONED"
        else:
            approved = scenario != "rejected"
            score = 712 if approved else 540
            ex.nodes.append(
                {
                    "id": bureau_id,
                    "name": "Consulta Buró de Crédito",
                    "type": "LINK",
                    "created": _now(),
                    "modified": _now(),
                    "detail": {
                        "status": "SUCCESS",
                        "httpCode": 200,
                        "idLink": _oid(),
                        "idWorkfloo": ex.id,
                        "responseTime": 850,
                    },
                    "files": [{"name": {"name": "reporte_buro.pdf"}, "value": "reporte_buro.pdf"}],
                    "variables": [{"name": "score", "value": score}],
                }
            )
            ex.nodes.append(
                {
                    "id": _oid(),
                    "name": "Validación de score",
                    "type": "DECISION_TREE",
                    "created": _now(),
                    "modified": _now(),
                    "decisionTree": [
                        {
                            "nameNode": "Score mayor o igual a 600",
                            "result": approved,
                            "message": "Score suficiente" if approved else "Score insuficiente",
                        }
                    ],
                }
            )
            exit_value = "APPROVED" if approved else "REJECTED"
            ex.nodes.append(
                {
                    "id": _oid(),
                    "name": "Reglas de aprobación",
                    "type": "RULESET",
                    "created": _now(),
                    "modified": _now(),
                    "ruleset": {
                        "exit": exit_value,
                        "labels": [exit_value.lower()],
                        "decision": [{"message": f"score {score}: {exit_value}"}],
                    },
                }
            )
            ex.status = "SUCCESS"
        self._touch(ex)
        self.notify(ex, EVENT_FINISHED)
        self._end_callback(ex)

    def _end_callback(self, ex: FakeExecution) -> None:
        """End-of-workfloo API step (assumption K3): POST JSON with the configured key header."""
        if not self.end_callback_url or ex.status not in self.end_callback_statuses:
            return
        url = self.end_callback_url.format(execution_id=ex.id)
        body = {
            "id": ex.id,
            "idWorkfloo": ex.id,
            "status": ex.status,
            "name": self.workfloo_name,
            "finishedAt": ex.modified,
        }
        headers = {"content-type": "application/json"}
        if self.end_callback_api_key:
            headers[self.end_callback_key_header] = self.end_callback_api_key
        node: dict[str, Any] = {
            "id": _oid(),
            "name": "Notificar fin de workfloo",
            "type": "API",
            "created": _now(),
            "modified": _now(),
            "apiData": {
                "request": {"url": url, "headers": mask_headers(headers), "queryParams": {}, "body": body},
                "response": {"url": url, "headers": {}, "queryParams": {}, "httpCode": 0},
            },
        }
        ex.nodes.append(node)

        def record(status: int | None) -> None:
            with self.lock:
                ex.end_callback_status = status
                node["apiData"]["response"]["httpCode"] = status or 0

        self.sender.submit(Delivery("finished", url, headers, body, execution_id=ex.id, on_result=record))

    # --- scheduling --------------------------------------------------------------------------

    def schedule(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_delivery(self, ex: FakeExecution, outcome: str, message: str | None) -> None:
        """SENT then SUCCESS/ERROR, ``nip_event_delay`` apart (PENDING is added by the handler)."""
        await asyncio.sleep(self.nip_event_delay)
        with self.lock:
            if ex.is_terminal:
                return
            self.nip_event(ex, "SENT")
        await asyncio.sleep(self.nip_event_delay)
        with self.lock:
            if ex.is_terminal:
                return
            if outcome == "ERROR":
                recoverable = message == RECOVERABLE_NIP_ERROR
                ex.send_error = {
                    "code": "DELIVERY_FAILED" if recoverable else "UNKNOWN_DESTINATION",
                    "recoverable": recoverable,
                }
            else:
                ex.send_error = None
            ex.delivery_in_flight = False
            self.nip_event(ex, outcome, message)

    async def run_decision(self, ex: FakeExecution) -> None:
        await asyncio.sleep(self.decision_delay)
        with self.lock:
            self.finish(ex)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.to_thread(self.sender.close)


def create_app(
    api_key: str = "kiban-test-key",
    *,
    end_callback_url: str | None = None,
    end_callback_api_key: str | None = None,
    end_callback_key_header: str = "x-api-key",
    end_callback_statuses: Collection[str] = ("SUCCESS", "ERROR", "ABANDONED"),
    scenarios: Mapping[str, str] | None = None,
    definitions: Collection[str] | None = None,
    default_scenario: str | None = None,
    decision_delay: float = 0.05,
    nip_event_delay: float = 0.02,
    callback_timeout: float = 2.0,
    faults: Faults | None = None,
    workfloo_name: str = "Originación PF con NIP",
) -> Starlette:
    """Build a fake Kiban.

    ``scenarios`` maps extra scenarioIds onto the built-in scenario names (the names themselves always
    work). ``definitions``: accepted ``idWorkflooDefinition`` values (None: any). ``default_scenario``:
    used when no scenarioId is sent (None: a missing scenarioId is a 400, as in the real sandbox).
    """
    faults = faults or Faults()
    mapping = {name: name for name in SCENARIOS}
    for scenario_id, name in (scenarios or {}).items():
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        mapping[scenario_id] = name
    state = FakeKibanState(
        api_key=api_key,
        faults=faults,
        sender=CallbackSender(faults, timeout=callback_timeout),
        scenarios=mapping,
        definitions=definitions,
        default_scenario=default_scenario,
        end_callback_url=end_callback_url,
        end_callback_api_key=end_callback_api_key,
        end_callback_key_header=end_callback_key_header,
        end_callback_statuses=end_callback_statuses,
        decision_delay=decision_delay,
        nip_event_delay=nip_event_delay,
        workfloo_name=workfloo_name,
    )

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
                id=_oid(),
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
            ex.node_type, ex.node_id, ex.node_name = "LINK_PROCESSING", _oid(), "Consulta Buró de Crédito"
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

    # --- /_fake routes (tests and demo, from any process) ------------------------------------

    async def fake_executions(request: Request) -> Response:
        with state.lock:
            return _json([state.summary(ex) for ex in state.executions.values()])

    async def fake_execution(request: Request) -> Response:
        with state.lock:
            ex = lookup(request.path_params["id"])
            if ex is None:
                return _json({"error": "not_found", "detail": "no such execution"}, 404)
            return _json({**state.summary(ex), "status_body": state.status_body(ex)})

    async def fake_abandon(request: Request) -> Response:
        """Cancel by hand, as from the console (sets cancelledAt/cancelledBy)."""
        with state.lock:
            ex = lookup(request.path_params["id"])
            if ex is None:
                return _json({"error": "not_found", "detail": "no such execution"}, 404)
            if not ex.is_terminal:
                ex.status, ex.cancelled_at, ex.cancelled_by = "ABANDONED", _now(), "console@fake.kiban"
                state._touch(ex)
                state.notify(ex, EVENT_FINISHED)
                state._end_callback(ex)
            return _json(state.summary(ex))

    async def fake_deliveries(request: Request) -> Response:
        # ``?since=N`` skips the first N records, so a poller reads only new deliveries (O(new), not O(all)).
        try:
            since = max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return _json({"error": "bad_request", "detail": "since must be an integer"}, 400)
        return _json([d.public() for d in state.sender.snapshot()[since:]])

    async def fake_reset(request: Request) -> Response:
        state.reset()
        return _json({"reset": True})

    routes = [
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
        Route("/_fake/executions", fake_executions, methods=["GET"]),
        Route("/_fake/executions/{id}", fake_execution, methods=["GET"]),
        Route("/_fake/executions/{id}/abandon", fake_abandon, methods=["POST"]),
        Route("/_fake/deliveries", fake_deliveries, methods=["GET"]),
        Route("/_fake/reset", fake_reset, methods=["POST"]),
        *fault_routes(faults),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fake = state
    app.add_middleware(FaultMiddleware, faults=faults)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.sandbox.fakes.kiban --port 8101 --end-callback-url http://.../{execution_id}/finished``"""
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m workers.sandbox.fakes.kiban", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--api-key", default="kiban-test-key", help="x-api-key the fake accepts")
    parser.add_argument("--end-callback-url", default=None, help="template with {execution_id}")
    parser.add_argument("--end-callback-api-key", default=None)
    parser.add_argument("--end-callback-key-header", default="x-api-key")
    parser.add_argument("--decision-delay", type=float, default=0.5, help="seconds before the decision")
    parser.add_argument("--nip-event-delay", type=float, default=0.2, help="seconds between NIP events")
    parser.add_argument("--default-scenario", default=None, choices=[*SCENARIOS, None])
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--faults", default="{}", help='initial fault knobs as JSON, e.g. {"fail_next": 2}')
    args = parser.parse_args(argv)
    knobs = {"latency_ms": args.latency_ms, **json.loads(args.faults)}
    app = create_app(
        args.api_key,
        end_callback_url=args.end_callback_url,
        end_callback_api_key=args.end_callback_api_key,
        end_callback_key_header=args.end_callback_key_header,
        decision_delay=args.decision_delay,
        nip_event_delay=args.nip_event_delay,
        default_scenario=args.default_scenario,
        faults=Faults(**knobs),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
