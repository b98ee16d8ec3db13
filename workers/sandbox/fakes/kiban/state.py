"""Fake Kiban state machine and data: executions, their history and the callbacks each change sends.

    execute -> FORM -> (form) LINK phase CREATE_ACCOUNT -> nip/send -> VALIDATE
      (NIP delivery callbacks PENDING -> SENT -> SUCCESS | ERROR to ``urlCallback``)
    -> nip/validate -> VALIDATE_2 -> nip/validate -> VALIDATED -> LINK_PROCESSING (bureau query)
    -> after ``decision_delay`` seconds: SUCCESS (ruleset exit APPROVED / REJECTED), ABANDONED or ERROR.

Status webhooks (POST, body = status object, ``x-api-key`` = ``callbackXApiKey``, ``x-kiban-event-id``,
``x-kiban-event-type``) go to the execute ``callbackUrl`` on every change, and an end-of-workfloo
API-step callback goes to ``end_callback_url`` (a template with ``{execution_id}``) when it ends.
The scenario (``scenarioId``) picks the outcome: see ``SCENARIOS``.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workers.sandbox.fakes.delivery import CallbackSender, Delivery, mask_headers
from workers.sandbox.fakes.faults import Faults
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


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def object_id() -> str:
    return secrets.token_hex(12)


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
    node_id: str = field(default_factory=object_id)
    node_name: str = "Formulario"
    phase: str | None = None
    form: dict[str, Any] = field(default_factory=dict)
    link_id: str = field(default_factory=object_id)
    link_events: list[dict[str, Any]] = field(default_factory=list)
    send_error: dict[str, Any] | None = None
    nip_url_callback: str | None = None
    nip_api_key: str | None = None
    nip_deliveries: int = 0
    delivery_in_flight: bool = False
    validations: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=now_iso)
    modified: str = field(default_factory=now_iso)
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
        ex.modified = now_iso()

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
                "modified": now_iso(),
                "form": {"fields": dict(ex.form)},
            }
        )
        ex.node_type, ex.node_id, ex.node_name, ex.phase = (
            "LINK",
            object_id(),
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
            "created": now_iso(),
            "modified": now_iso(),
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
                node["modified"] = now_iso()

    def set_phase(self, ex: FakeExecution, phase: str) -> None:
        ex.phase = phase
        self._sync_link_node(ex)
        self._touch(ex)
        self.notify(ex, EVENT_PHASE)

    def nip_event(self, ex: FakeExecution, status: str, error_message: str | None = None) -> None:
        """Append a NIP delivery event, post it to ``urlCallback`` (assumption K2) and notify."""
        event: dict[str, Any] = {"status": status, "date": now_iso()}
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
        bureau_id = object_id()
        if scenario == "error":
            ex.nodes.append(
                {
                    "id": bureau_id,
                    "name": "Consulta Buró de Crédito",
                    "type": "LINK",
                    "created": now_iso(),
                    "modified": now_iso(),
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
                    "created": now_iso(),
                    "modified": now_iso(),
                    "detail": {
                        "status": "SUCCESS",
                        "httpCode": 200,
                        "idLink": object_id(),
                        "idWorkfloo": ex.id,
                        "responseTime": 850,
                    },
                    "files": [{"name": {"name": "reporte_buro.pdf"}, "value": "reporte_buro.pdf"}],
                    "variables": [{"name": "score", "value": score}],
                }
            )
            ex.nodes.append(
                {
                    "id": object_id(),
                    "name": "Validación de score",
                    "type": "DECISION_TREE",
                    "created": now_iso(),
                    "modified": now_iso(),
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
                    "id": object_id(),
                    "name": "Reglas de aprobación",
                    "type": "RULESET",
                    "created": now_iso(),
                    "modified": now_iso(),
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
            "id": object_id(),
            "name": "Notificar fin de workfloo",
            "type": "API",
            "created": now_iso(),
            "modified": now_iso(),
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
