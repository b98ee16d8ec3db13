"""The three Kiban callback endpoints: auth → content type → size → JSON → schema → one atomic write."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.http import (
    Handler,
    JSONBytes,
    KeyChecker,
    execution_id_param,
    from_pydantic,
    header,
    read_json_object,
    redis_unavailable,
    route,
    validation_error,
)
from receiver.intake import Intake, IntakeUnavailableError
from receiver.intake.rqjob import utc_stamp
from receiver.metrics import ReceiverMetrics
from workers.core import keys, tracing
from workers.core.contract import (
    EXECUTION_ID_RE,
    FINISHED_BODY_ID_FIELDS,
    JOB_FUNCTIONS,
    CallbackKind,
    NipEventBody,
    StatusWebhookBody,
    finished_event_id,
    nip_event_id,
    status_event_id,
    stored_body,
)
from workers.core.log import get_logger
from workers.core.settings import Settings

log = get_logger("receiver.endpoints.kiban")

EVENT_TYPE_HEADER_MAX = 128


class Callback(NamedTuple):
    """What one validated delivery is: the fields of its job besides the body and the receive time."""

    kind: CallbackKind
    event_id: str
    execution_id: str | None
    link_id: str | None = None
    event_type_header: str | None = None


# Validates a delivery's body (already an object) and tells which event it is; raises HTTPError.
Parse = Callable[[Request, dict[str, Any]], Awaitable[Callback]]


class CallbackEndpoints:
    def __init__(self, settings: Settings, metrics: ReceiverMetrics) -> None:
        self.keys = KeyChecker(settings.bridge_callback_keys, settings.bridge_callback_key_headers)
        self.limit = settings.bridge_max_body_bytes
        self.body_timeout = settings.bridge_body_read_timeout_seconds
        self.metrics = metrics
        self.unavailable = redis_unavailable(settings, "the event was not stored; retry later")
        if not self.keys.configured:
            log.warning(
                "receiver.no_callback_keys", detail="BRIDGE_CALLBACK_KEYS is empty: every callback gets 401"
            )

    def routes(self) -> list[Route]:
        return [
            route("/v1/kiban/executions/{execution_id}/nip-events", self._callback(self.nip_for_execution)),
            route("/v1/kiban/nip-events", self._callback(self.nip_for_link)),
            route("/v1/kiban/status", self._callback(self.status)),
            route(
                "/v1/kiban/executions/{execution_id}/finished",
                self._callback(self.finished_for_execution, empty_ok=True),
            ),
            route("/v1/kiban/finished", self._callback(self.finished, empty_ok=True)),
        ]

    def _callback(self, parse: Parse, *, empty_ok: bool = False) -> Handler:
        """The steps every callback shares: key, body, ``parse``, then one atomic write of the job."""

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            body = await read_json_object(
                request, self.keys, self.limit, self.body_timeout, empty_ok=empty_ok
            )
            event = await parse(request, body)
            received_at = utc_stamp()
            payload: dict[str, Any] = {  # a workers.core.contract.CallbackPayload (hot path)
                "event_id": event.event_id,
                "kind": event.kind,
                "execution_id": event.execution_id,
                "link_id": event.link_id,
                "received_at": received_at,
                "event_type_header": event.event_type_header,
                "body": stored_body(event.kind, body),  # only what the job reads
            }
            if tracing.active():
                ids = {"workfloo.event_id": event.event_id, "workfloo.execution_id": event.execution_id or ""}
                with tracing.span(f"callback {event.kind}", kind=tracing.SpanKind.SERVER, attributes=ids):
                    payload[tracing.TRACEPARENT] = tracing.traceparent()
                    return await self._write(request, event, payload, received_at, started)
            return await self._write(request, event, payload, received_at, started)

        return handle

    async def _write(
        self, request: Request, event: Callback, payload: dict[str, Any], received_at: str, started: float
    ) -> Response:
        """One atomic write of the callback's job and dedupe key (``Intake.enqueue``); the answer."""
        intake: Intake = request.app.state.intake
        try:
            accepted = await intake.enqueue(
                event.event_id, JOB_FUNCTIONS[event.kind], payload,
                description=f"{event.kind} callback {event.event_id}", stamp=received_at,
            )  # fmt: skip
        except IntakeUnavailableError as exc:
            self.metrics.unavailable.inc()
            log.warning(
                "receiver.redis_unavailable", kind=event.kind, event_id=event.event_id, reason=str(exc)
            )
            raise self.unavailable from None
        self.metrics.count_callback(event.kind, accepted, time.perf_counter() - started)
        return JSONBytes({"status": "accepted" if accepted else "duplicate", "event_id": event.event_id})

    # -- what each callback is ---------------------------------------------------------------------

    async def nip_for_execution(self, request: Request, body: dict[str, Any]) -> Callback:
        execution_id = execution_id_param(request.path_params["execution_id"], "execution_id")
        nip = _validate_nip(body)
        return Callback("nip", nip_event_id(execution_id, nip.event, nip.date), execution_id, nip.linkId)

    async def nip_for_link(self, request: Request, body: dict[str, Any]) -> Callback:
        """NIP callback without an execution id: correlate through ``workfloo:link:<linkId>`` when known."""
        nip = _validate_nip(body)
        if nip.linkId is None:
            raise validation_error("linkId", "required when the URL has no execution id")
        try:
            known = await request.app.state.intake.call("GET", keys.link(nip.linkId))
        except IntakeUnavailableError:
            self.metrics.unavailable.inc()
            raise self.unavailable from None
        execution_id = known.decode() if isinstance(known, bytes) else None
        if execution_id is not None and not EXECUTION_ID_RE.fullmatch(execution_id):
            execution_id = None
        # The id hashes the link id (not the looked-up execution id) so it stays the same whether or
        # not the link was known when each copy of the delivery arrived.
        return Callback("nip", nip_event_id(nip.linkId, nip.event, nip.date), execution_id, nip.linkId)

    async def status(self, request: Request, body: dict[str, Any]) -> Callback:
        try:
            status = StatusWebhookBody.model_validate(body)
        except ValidationError as exc:
            raise from_pydantic(exc) from None
        event_type = header(request.scope, b"x-kiban-event-type")
        if event_type is not None:
            event_type = event_type[:EVENT_TYPE_HEADER_MAX]
        event_id = status_event_id(header(request.scope, b"x-kiban-event-id"), body)
        return Callback("status", event_id, status.id, None, event_type)

    async def finished_for_execution(self, request: Request, body: dict[str, Any]) -> Callback:
        execution_id = execution_id_param(request.path_params["execution_id"], "execution_id")
        return Callback("finished", finished_event_id(execution_id), execution_id)

    async def finished(self, request: Request, body: dict[str, Any]) -> Callback:
        execution_id: str | None = None
        for field in FINISHED_BODY_ID_FIELDS:
            if body.get(field) is not None:
                execution_id = execution_id_param(body[field], field)
                break
        else:
            query = request.query_params.get("execution_id")
            if query is not None:
                execution_id = execution_id_param(query, "execution_id")
        if execution_id is None:
            raise validation_error(
                "execution_id",
                "give the execution id in the body (id, workflooId, idWorkfloo, executionId) "
                "or the query parameter execution_id",
            )
        return Callback("finished", finished_event_id(execution_id), execution_id)


def _validate_nip(body: dict[str, Any]) -> NipEventBody:
    try:
        return NipEventBody.model_validate(body)
    except ValidationError as exc:
        raise from_pydantic(exc) from None
