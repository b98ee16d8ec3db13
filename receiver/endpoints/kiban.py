"""The three Kiban callback endpoints: auth → content type → size → JSON → schema → one atomic write."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver.http import (
    HTTPError,
    JSONBytes,
    KeyChecker,
    execution_id_param,
    from_pydantic,
    header,
    read_json_object,
    validation_error,
)
from receiver.intake import Intake, IntakeUnavailable
from receiver.intake.rqjob import utc_stamp
from receiver.metrics import ReceiverMetrics
from workers.core import keys
from workers.core.contract import (
    EXECUTION_ID_RE,
    FINISHED_BODY_ID_FIELDS,
    JOB_FUNCTIONS,
    NipEventBody,
    StatusWebhookBody,
    finished_event_id,
    nip_event_id,
    status_event_id,
)
from workers.core.log import get_logger
from workers.core.settings import Settings

log = get_logger("receiver.endpoints.kiban")

EVENT_TYPE_HEADER_MAX = 128


class CallbackEndpoints:
    def __init__(self, settings: Settings, metrics: ReceiverMetrics) -> None:
        self.keys = KeyChecker(settings.bridge_callback_keys, settings.bridge_callback_key_headers)
        self.limit = settings.bridge_max_body_bytes
        self.body_timeout = settings.bridge_body_read_timeout_seconds
        self.metrics = metrics
        self.unavailable = HTTPError(
            503,
            "redis_unavailable",
            "the event was not stored; retry later",
            headers={"Retry-After": str(settings.bridge_retry_after_seconds)},
        )
        if not self.keys.configured:
            log.warning(
                "receiver.no_callback_keys", detail="BRIDGE_CALLBACK_KEYS is empty: every callback gets 401"
            )

    def routes(self) -> list[Route]:
        return [
            Route(
                "/v1/kiban/executions/{execution_id}/nip-events",
                _Plain(self.nip_for_execution),
                methods=["POST"],
            ),
            Route("/v1/kiban/nip-events", _Plain(self.nip_for_link), methods=["POST"]),
            Route("/v1/kiban/status", _Plain(self.status), methods=["POST"]),
            Route(
                "/v1/kiban/executions/{execution_id}/finished",
                _Plain(self.finished_for_execution),
                methods=["POST"],
            ),
            Route("/v1/kiban/finished", _Plain(self.finished), methods=["POST"]),
        ]

    # -- shared steps ------------------------------------------------------------------------------

    async def _body(self, request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
        return await read_json_object(request, self.keys, self.limit, self.body_timeout, empty_ok=empty_ok)

    async def _store(
        self, request: Request, started: float, kind: str, event_id: str, payload: dict[str, Any]
    ) -> Response:
        intake: Intake = request.app.state.intake
        try:
            accepted = await intake.enqueue(
                event_id, JOB_FUNCTIONS[kind], payload, description=f"{kind} callback {event_id}",
                stamp=payload["received_at"],
            )  # fmt: skip
        except IntakeUnavailable as exc:
            self.metrics.unavailable.inc()
            log.warning("receiver.redis_unavailable", kind=kind, event_id=event_id, reason=str(exc))
            raise self.unavailable from None
        self.metrics.count_callback(kind, accepted, time.perf_counter() - started)
        return JSONBytes({"status": "accepted" if accepted else "duplicate", "event_id": event_id})

    # -- endpoints ---------------------------------------------------------------------------------

    async def nip_for_execution(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._body(request)
            execution_id = execution_id_param(request.path_params["execution_id"], "execution_id")
            nip = _validate_nip(body)
            event_id = nip_event_id(execution_id, nip.event, nip.date)
            payload = _payload(event_id, "nip", execution_id, nip.linkId, None, body)
            return await self._store(request, started, "nip", event_id, payload)
        except HTTPError as exc:
            return exc.response()

    async def nip_for_link(self, request: Request) -> Response:
        """NIP callback without an execution id: correlate through ``workfloo:link:<linkId>`` when known."""
        started = time.perf_counter()
        try:
            body = await self._body(request)
            nip = _validate_nip(body)
            if nip.linkId is None:
                raise validation_error("linkId", "required when the URL has no execution id")
            try:
                known = await request.app.state.intake.call("GET", keys.link(nip.linkId))
            except IntakeUnavailable:
                self.metrics.unavailable.inc()
                raise self.unavailable from None
            execution_id = known.decode() if isinstance(known, bytes) else None
            if execution_id is not None and not EXECUTION_ID_RE.fullmatch(execution_id):
                execution_id = None
            # The id hashes the link id (not the looked-up execution id) so it stays the same whether or
            # not the link was known when each copy of the delivery arrived.
            event_id = nip_event_id(nip.linkId, nip.event, nip.date)
            payload = _payload(event_id, "nip", execution_id, nip.linkId, None, body)
            return await self._store(request, started, "nip", event_id, payload)
        except HTTPError as exc:
            return exc.response()

    async def status(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._body(request)
            try:
                status = StatusWebhookBody.model_validate(body)
            except ValidationError as exc:
                raise from_pydantic(exc) from None
            event_type = header(request.scope, b"x-kiban-event-type")
            if event_type is not None:
                event_type = event_type[:EVENT_TYPE_HEADER_MAX]
            event_id = status_event_id(header(request.scope, b"x-kiban-event-id"), body)
            payload = _payload(event_id, "status", status.id, None, event_type, body)
            return await self._store(request, started, "status", event_id, payload)
        except HTTPError as exc:
            return exc.response()

    async def finished_for_execution(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._body(request, empty_ok=True)
            execution_id = execution_id_param(request.path_params["execution_id"], "execution_id")
            return await self._finished(request, started, execution_id, body)
        except HTTPError as exc:
            return exc.response()

    async def finished(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await self._body(request, empty_ok=True)
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
            return await self._finished(request, started, execution_id, body)
        except HTTPError as exc:
            return exc.response()

    async def _finished(
        self, request: Request, started: float, execution_id: str, body: dict[str, Any]
    ) -> Response:
        event_id = finished_event_id(execution_id)
        payload = _payload(event_id, "finished", execution_id, None, None, body)
        return await self._store(request, started, "finished", event_id, payload)


class _Plain:
    """ASGI adapter for the callback handlers: they answer every error themselves, so Starlette's
    per-request exception-handler wrapping is skipped (anything unexpected still reaches the app's
    server-error handler)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def _validate_nip(body: dict[str, Any]) -> NipEventBody:
    try:
        return NipEventBody.model_validate(body)
    except ValidationError as exc:
        raise from_pydantic(exc) from None


def _payload(
    event_id: str,
    kind: str,
    execution_id: str | None,
    link_id: str | None,
    event_type_header: str | None,
    body: dict[str, Any],
) -> dict[str, Any]:
    """A ``workers.core.contract.CallbackPayload`` (built directly: this is the hot path)."""
    return {
        "event_id": event_id,
        "kind": kind,
        "execution_id": execution_id,
        "link_id": link_id,
        "received_at": utc_stamp(),
        "event_type_header": event_type_header,
        "body": body,
    }
