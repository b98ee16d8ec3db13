"""``GET /v1/applications/{execution_id}/timeline``: every event of one application, in order.

Internal endpoint: the caller presents one of ``BRIDGE_INTERNAL_KEYS`` in ``x-api-key`` (compared in
constant time against every configured key). Answers 404 when the bridge has no event for the id and
503 when Redis cannot be reached.
"""

from __future__ import annotations

import hmac
import re

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workers import keys
from workers.settings import Settings
from workers.timeline import MAX_TIMELINE_EVENTS, build_timeline

_EXECUTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def internal_key_ok(settings: Settings, presented: str | None) -> bool:
    """True when ``presented`` equals one of the internal keys; every key is compared (constant time)."""
    candidate = (presented or "").encode()
    matched = False
    for key in settings.bridge_internal_keys:
        matched |= hmac.compare_digest(candidate, key.get_secret_value().encode())
    return matched and bool(candidate)


async def timeline(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    if not internal_key_ok(settings, request.headers.get("x-api-key")):
        return _error(401, "unauthorized", "missing or invalid API key")
    execution_id = request.path_params["execution_id"]
    if not _EXECUTION_ID.match(execution_id):
        return _error(422, "invalid_execution_id", "execution_id: letters, digits, '_' or '-' only")
    try:
        raw = await request.app.state.redis.lrange(keys.timeline(execution_id), 0, MAX_TIMELINE_EVENTS - 1)
    except (RedisError, OSError):
        return _error(503, "unavailable", "event store unavailable", {"Retry-After": "1"})
    if not raw:
        return _error(404, "not_found", f"no events for execution {execution_id}")
    return JSONResponse(build_timeline(execution_id, raw))


routes = [Route("/v1/applications/{execution_id}/timeline", timeline, methods=["GET"])]
