"""``GET /v1/applications/{execution_id}/timeline``: every event of one application, in order, with the
time between steps.

Internal endpoint: the caller presents one of ``BRIDGE_INTERNAL_KEYS`` in ``x-api-key`` (every key is
compared in constant time). 404 when the bridge has no event for the id, 503 when Redis does not answer
in time (the receiver's client: bounded pool, no retries, the intake's timeout).
"""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.http import UNAUTHORIZED, HTTPError, JSONBytes, KeyChecker
from workers.core import keys
from workers.core.settings import Settings
from workers.core.timeline import MAX_TIMELINE_EVENTS, build_timeline

PATH = "/v1/applications/{execution_id}/timeline"
_EXECUTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def routes(settings: Settings) -> list[BaseRoute]:
    checker = KeyChecker(settings.bridge_internal_keys, ["x-api-key"])

    async def timeline(request: Request) -> Response:
        if not checker.allows(request.scope["headers"]):
            return UNAUTHORIZED.response()
        execution_id = request.path_params["execution_id"]
        if not _EXECUTION_ID.match(execution_id):
            detail = "execution_id: 1-128 letters, digits, '_' or '-'"
            return HTTPError(422, "validation_error", detail).response()
        client: aioredis.Redis = request.app.state.redis
        try:
            raw = await client.lrange(keys.timeline(execution_id), 0, MAX_TIMELINE_EVENTS - 1)
        except (RedisError, OSError, TimeoutError):
            return HTTPError(503, "unavailable", "event store unavailable", {"Retry-After": "1"}).response()
        if not raw:
            return HTTPError(404, "not_found", f"no events for execution {execution_id}").response()
        return JSONBytes(build_timeline(execution_id, raw))

    return [Route(PATH, timeline, methods=["GET"])]


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
                        "schema": {"type": "string", "pattern": _EXECUTION_ID.pattern},
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
                    "503": {"description": "Redis unavailable", **error},
                },
            }
        }
    }
