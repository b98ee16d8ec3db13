"""Command endpoints for internal services (own key: ``BRIDGE_INTERNAL_KEYS`` in header ``x-api-key``).

* ``POST /v1/applications`` — body: the form fields (``{"form": {…}}`` or the fields at top level) and an
  optional ``scenarioId``; enqueues ``start_application``. Optional ``Idempotency-Key`` header: the same
  key gives the same command id and is accepted once.
* ``POST /v1/applications/{execution_id}/nip`` — body ``{"nip": "123456"}``; enqueues ``validate_nip``.
  The NIP is stored sealed under a 15-minute key, never in the job payload. Optional ``Idempotency-Key``
  header, scoped to the execution: a retry gets the first command back (``duplicate``) and is neither
  enqueued nor stored again, so a good NIP cannot be validated twice (Kiban's 400 → ``action.failed``).
* ``POST /v1/applications/{execution_id}/nip/resend`` — enqueues ``resend_nip``.
* ``DELETE /v1/applications/{execution_id}`` (``?force=true`` optional) — enqueues ``forget_job``: erase
  everything held about the application; ``application.forgotten`` tells when it is done.

* ``GET /v1/commands/{command_id}`` — ``200 {"command_id", "status", "execution_id"}``: the command job's
  RQ status (``queued``, ``started``, ``scheduled`` between retries, ``finished``, ``failed`` for a dead
  letter) and, once known, the execution id (a start's: as soon as Kiban created the execution; the
  others': the one they were given). 404 for an id that is no command, or a job that expired
  (``BRIDGE_JOB_RESULT_TTL_SECONDS`` after it finished). Read-only: a few fields of the job hash, through
  the intake.

The form and the NIP are sealed (``workers.core.crypto``, ``BRIDGE_DATA_KEYS``) before they reach Redis.
Each answers ``202 {"command_id", "status": "accepted"|"duplicate"}``; progress arrives as events.
Errors follow the receiver's rules: 401 key, 415 content type, 413 size, 400 JSON, 422 schema (field
named), 503 with ``Retry-After`` when Redis did not confirm the write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from receiver.http import (
    UNAUTHORIZED,
    HTTPError,
    JSONBytes,
    KeyChecker,
    execution_id_param,
    read_json_object,
    redis_unavailable,
    route,
    validation_error,
)
from receiver.intake import Intake, IntakeUnavailableError
from receiver.intake.rqjob import JOB_KEY_PREFIX, JOB_VIEW_FIELDS, job_view, utc_stamp
from receiver.openapi import unavailable
from workers.core import contract, crypto, keys, tracing
from workers.core.crypto import KeyRing
from workers.core.log import get_logger
from workers.core.settings import Settings

log = get_logger("receiver.endpoints.commands")

NIP_RE = re.compile(r"[0-9]{4,8}")
MAX_FORM_FIELDS = 200
IDEMPOTENCY_KEY_MAX = 200


class CommandEndpoints:
    def __init__(self, settings: Settings) -> None:
        self.data_keys = KeyRing.from_settings(settings)  # create_app refuses to start without one
        self.keys = KeyChecker(settings.bridge_internal_keys, ["x-api-key"])
        self.limit = settings.bridge_max_body_bytes
        self.body_timeout = settings.bridge_body_read_timeout_seconds
        self.unavailable = redis_unavailable(settings, "the command was not stored; retry later")
        self.read_unavailable = redis_unavailable(settings, "command store unavailable")

    def routes(self) -> list[BaseRoute]:
        return [
            route("/v1/applications", self.start),
            route("/v1/applications/{execution_id}/nip", self.validate_nip),
            route("/v1/applications/{execution_id}/nip/resend", self.resend_nip),
            route("/v1/applications/{execution_id}", self.forget, "DELETE"),
            route("/v1/commands/{command_id}", self.command, "GET"),
        ]

    async def _body(self, request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
        return await read_json_object(request, self.keys, self.limit, self.body_timeout, empty_ok=empty_ok)

    async def _enqueue(
        self, request: Request, command_id: str, func: str, payload: Mapping[str, Any]
    ) -> Response:
        if tracing.active():
            name = f"command {func.rsplit('.', 1)[-1]}"
            attributes = {"workfloo.command_id": command_id}
            with tracing.span(name, kind=tracing.SpanKind.SERVER, attributes=attributes):
                traced = {**payload, tracing.TRACEPARENT: tracing.traceparent()}
                return await self._write(request, command_id, func, traced)
        return await self._write(request, command_id, func, payload)

    async def _write(
        self, request: Request, command_id: str, func: str, payload: Mapping[str, Any]
    ) -> Response:
        intake: Intake = request.app.state.intake
        try:
            accepted = await intake.enqueue(
                command_id, func, payload, description=f"command {command_id}", stamp=utc_stamp()
            )
        except IntakeUnavailableError:
            raise self.unavailable from None
        status = "accepted" if accepted else "duplicate"
        return JSONBytes({"command_id": command_id, "status": status}, 202)

    async def start(self, request: Request) -> Response:
        body = await self._body(request)
        scenario = body.get("scenarioId")
        if scenario is not None and (not isinstance(scenario, str) or not 0 < len(scenario) <= 128):
            raise validation_error("scenarioId", "must be a non-empty string of at most 128 characters")
        if "form" in body:
            form = body["form"]
            if not isinstance(form, dict):
                raise validation_error("form", "must be an object of field id to value")
            prefix = "form."
        else:
            form = {k: v for k, v in body.items() if k != "scenarioId"}
            prefix = ""
        if not form:
            raise validation_error("form", "must name at least one field")
        if len(form) > MAX_FORM_FIELDS:
            raise validation_error("form", f"at most {MAX_FORM_FIELDS} fields")
        for name, value in form.items():
            if not isinstance(value, str | int | float | bool) or value is None:
                raise validation_error(prefix + name, "must be a string, number or boolean")
        command_id = contract.new_command_id("start", _idempotency_key(request))
        payload = contract.start_command(command_id, form, scenario, self.data_keys)
        return await self._enqueue(request, command_id, contract.START_FUNCTION, payload)

    async def validate_nip(self, request: Request) -> Response:
        body = await self._body(request)
        execution_id = execution_id_param(request.path_params["execution_id"])
        nip = body.get("nip")
        if not isinstance(nip, str) or not NIP_RE.fullmatch(nip):
            raise validation_error("nip", "must be a string of 4-8 digits")
        key = _idempotency_key(request)
        command_id = contract.new_command_id("nip", key, scope=execution_id)
        intake: Intake = request.app.state.intake
        sealed = self.data_keys.seal_text(nip, crypto.NIP, command_id)
        try:
            if key is not None and await intake.call("EXISTS", keys.dedupe(command_id)):
                # A retry of an accepted command: its job may have taken the NIP already; never store
                # it again. (Two concurrent first tries both store it; the intake enqueues one job.)
                return JSONBytes({"command_id": command_id, "status": "duplicate"}, 202)
            await intake.call("SET", keys.nip_ref(command_id), sealed, "EX", str(keys.NIP_REF_TTL_SECONDS))
        except IntakeUnavailableError:
            raise self.unavailable from None
        payload = contract.validate_command(command_id, execution_id)
        return await self._enqueue(request, command_id, contract.VALIDATE_FUNCTION, payload)

    async def resend_nip(self, request: Request) -> Response:
        await self._body(request, empty_ok=True)
        execution_id = execution_id_param(request.path_params["execution_id"])
        command_id = contract.new_command_id("resend")
        payload = contract.resend_command(command_id, execution_id)
        return await self._enqueue(request, command_id, contract.RESEND_FUNCTION, payload)

    async def forget(self, request: Request) -> Response:
        if not self.keys.allows(request.scope["headers"]):
            raise UNAUTHORIZED
        execution_id = execution_id_param(request.path_params["execution_id"])
        force = request.query_params.get("force", "false").lower()
        if force not in ("true", "false", "1", "0"):
            raise validation_error("force", "must be true or false")
        command_id = contract.new_command_id("forget")
        payload = contract.forget_command(command_id, execution_id, force in ("true", "1"))
        return await self._enqueue(request, command_id, contract.FORGET_FUNCTION, payload)

    async def command(self, request: Request) -> Response:
        if not self.keys.allows(request.scope["headers"]):
            raise UNAUTHORIZED
        command_id = request.path_params["command_id"]
        if not contract.COMMAND_ID_RE.fullmatch(command_id):
            raise HTTPError(404, "not_found", "no such command")
        intake: Intake = request.app.state.intake
        try:
            fields = await intake.call("HMGET", JOB_KEY_PREFIX + command_id, *JOB_VIEW_FIELDS)
        except IntakeUnavailableError:
            raise self.read_unavailable from None
        view = job_view(*fields)
        if view is None:
            raise HTTPError(404, "not_found", "no such command (unknown, or expired after it ended)")
        execution_id = view["meta"].get("execution_id") or view["argument"].get("execution_id")
        return JSONBytes(
            {
                "command_id": command_id,
                "status": view["status"],
                "execution_id": execution_id if isinstance(execution_id, str) else None,
            }
        )


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
        raise validation_error("Idempotency-Key", f"must be 1-{IDEMPOTENCY_KEY_MAX} characters")
    return key


def routes(settings: Settings) -> list[BaseRoute]:
    """Routes to add to the receiver app."""
    return CommandEndpoints(settings).routes()


def _op(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"internalKey": []}],
        "responses": {
            "202": {"description": "accepted: {command_id, status}"},
            "401": {"description": "missing or invalid x-api-key"},
            "422": {"description": "schema error, field named"},
            "503": unavailable("Redis unavailable; nothing stored"),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def openapi_paths(settings: Settings) -> dict[str, Any]:
    """OpenAPI ``paths`` entries of the routes above (merged into ``GET /openapi.json``)."""
    execution = [{"name": "execution_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "the same key names the same command: a retry is answered with the first "
        f"command_id and status duplicate (remembered {settings.bridge_dedupe_ttl_seconds} s)",
        "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
    }
    return {
        "/v1/applications": {
            "post": {
                **_op(
                    "Start an application (execute, submit the form, send the NIP)",
                    {
                        "type": "object",
                        "properties": {
                            "form": {"type": "object", "additionalProperties": True},
                            "scenarioId": {"type": "string"},
                        },
                    },
                ),
                "parameters": [idempotency],
            }
        },
        "/v1/applications/{execution_id}/nip": {
            "post": {
                **_op(
                    "Validate the applicant's NIP (both steps)",
                    {"type": "object", "required": ["nip"], "properties": {"nip": {"type": "string"}}},
                ),
                "parameters": [*execution, idempotency],
            }
        },
        "/v1/applications/{execution_id}/nip/resend": {
            "post": {**_op("Resend the NIP", None), "parameters": execution}
        },
        "/v1/commands/{command_id}": {
            "get": {
                "summary": "A command's status and, once known, its execution id",
                "operationId": "getCommand",
                "security": [{"internalKey": []}],
                "parameters": [
                    {
                        "name": "command_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": f"^{contract.COMMAND_ID_RE.pattern}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "status: queued, started, scheduled (between retries), deferred, "
                        "finished, failed (a dead letter), stopped, canceled; execution_id: null until known",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["command_id", "status", "execution_id"],
                                    "properties": {
                                        "command_id": {"type": "string"},
                                        "status": {"type": "string"},
                                        "execution_id": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    "401": {"description": "missing or invalid x-api-key"},
                    "404": {"description": "no such command, or its job expired after it ended"},
                    "503": unavailable("Redis unavailable"),
                },
            }
        },
        "/v1/applications/{execution_id}": {
            "delete": {
                **_op("Erase everything held about the application (right to cancellation)", None),
                "parameters": [
                    *execution,
                    {"name": "force", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
            }
        },
    }
