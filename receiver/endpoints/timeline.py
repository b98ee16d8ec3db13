"""``GET /v1/applications/{execution_id}/timeline``: every event of one application, in order, with the
time between steps.

Internal endpoint: the caller presents one of ``BRIDGE_INTERNAL_KEYS`` in ``x-api-key`` (every key is
compared in constant time). 404 when the bridge has no event for the id, 503 when Redis does not answer
in time (read through the intake: same timeout, same 503 as every endpoint).
"""

from __future__ import annotations

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
    redis_unavailable,
    route,
)
from receiver.intake import Intake, IntakeUnavailableError
from receiver.openapi import unavailable
from workers.core import keys
from workers.core.contract import EXECUTION_ID_RE
from workers.core.settings import Settings
from workers.core.timeline import MAX_TIMELINE_EVENTS, build_timeline

PATH = "/v1/applications/{execution_id}/timeline"


def routes(settings: Settings) -> list[BaseRoute]:
    checker = KeyChecker(settings.bridge_internal_keys, ["x-api-key"])
    unavailable = redis_unavailable(settings, "event store unavailable")

    async def timeline(request: Request) -> Response:
        if not checker.allows(request.scope["headers"]):
            raise UNAUTHORIZED
        execution_id = execution_id_param(request.path_params["execution_id"])
        intake: Intake = request.app.state.intake
        try:
            raw = await intake.call("LRANGE", keys.timeline(execution_id), 0, MAX_TIMELINE_EVENTS - 1)
        except IntakeUnavailableError:
            raise unavailable from None
        if not raw:
            raise HTTPError(404, "not_found", f"no events for execution {execution_id}")
        return JSONBytes(build_timeline(execution_id, raw))

    return [route(PATH, timeline, "GET")]


def openapi_paths() -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        PATH: {
            "get": {
                "summary": "Every event of one application, in order, with the time between steps",
                "operationId": "getApplicationTimeline",
                "security": [{"apiKey": []}],
                "parameters": [
                    {
                        "name": "execution_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": f"^{EXECUTION_ID_RE.pattern}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Event envelopes with since_previous_ms and since_start_ms",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": {"description": "Missing or invalid internal key", **error},
                    "404": {"description": "No event for this execution", **error},
                    "422": {"description": "Malformed execution id", **error},
                    "503": unavailable("Redis unavailable"),
                },
            }
        }
    }
