"""Small HTTP pieces of the receiver: the endpoint adapter and its error type, JSON responses, the 503,
key check, content type and a body reader that counts bytes while streaming."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson
from pydantic import SecretStr, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from workers.core.contract import EXECUTION_ID_RE
from workers.core.settings import Settings

Handler = Callable[[Request], Awaitable[Response]]


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class HTTPError(Exception):
    """An answer for bad input: ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(
        self, status: int, code: str, detail: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return JSONBytes({"error": self.code, "detail": self.detail}, self.status, headers=self.headers)


class Endpoint:
    """ASGI app of one route: runs the handler and answers the ``HTTPError`` it raises, so handlers
    state their errors and never build error responses. Starlette's per-request exception-handler
    wrapping is skipped (anything unexpected still reaches the app's server-error handler)."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.handler(Request(scope, receive))
        except HTTPError as exc:
            response = exc.response()
        await response(scope, receive, send)


def route(path: str, handler: Handler, method: str = "POST") -> Route:
    """A route answered through ``Endpoint``."""
    return Route(path, Endpoint(handler), methods=[method])


def redis_unavailable(settings: Settings, detail: str) -> HTTPError:
    """The 503 of every endpoint when Redis did not confirm in time: the client retries after
    ``BRIDGE_RETRY_AFTER_SECONDS``."""
    retry_after = {"Retry-After": str(settings.bridge_retry_after_seconds)}
    return HTTPError(503, "redis_unavailable", detail, headers=retry_after)


def validation_error(field: str, message: str) -> HTTPError:
    return HTTPError(422, "validation_error", [{"field": field, "message": message}])


def from_pydantic(exc: ValidationError) -> HTTPError:
    """422 naming each failing field; never echoes the input (it may hold personal data)."""
    detail = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        detail.append({"field": field, "message": error["msg"]})
    return HTTPError(422, "validation_error", detail)


class KeyChecker:
    """Accepts a request that carries any configured key in one configured header.

    The presented value is compared with every key by ``hmac.compare_digest`` without stopping early, so
    the time taken does not tell which key came close. With no key configured nothing is accepted (fail
    closed).
    """

    def __init__(self, keys: Iterable[SecretStr], headers: Iterable[str]) -> None:
        self._keys = [k.get_secret_value().encode() for k in keys if k.get_secret_value()]
        self._headers = frozenset(h.strip().lower().encode("latin-1") for h in headers if h.strip())

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def allows(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether the one key header carries a configured key; more than one key header (of any of the
        configured names) is ``TOO_MANY_KEYS`` (400), so one request can try one key only."""
        presented: bytes | None = None
        for name, value in raw_headers:
            if name in self._headers:
                if presented is not None:
                    raise TOO_MANY_KEYS
                presented = value
        if presented is None:
            return False
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(presented, key)
        return ok


CONNECTION_CLOSE = {"Connection": "close"}

UNAUTHORIZED = HTTPError(401, "unauthorized", "missing or invalid API key")
TOO_MANY_KEYS = HTTPError(400, "bad_request", "more than one API key header", headers=CONNECTION_CLOSE)


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """First value of header ``name`` (lower-case bytes), without building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def is_json_content_type(value: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, any parameters (charset) allowed."""
    if not value:
        return False
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, limit: int, deadline: float | None = None) -> bytes:
    """The request body, refusing more than ``limit`` bytes whatever Content-Length claims.

    The whole body must arrive within ``deadline`` seconds: uvicorn has no body-read timeout, so without
    this a client trickling a byte at a time (slow loris) would hold a connection and a task forever.
    """
    try:
        async with asyncio.timeout(deadline):
            return await _read_body(request, limit)
    except TimeoutError:
        raise HTTPError(
            408, "request_timeout", f"body not received within {deadline:g} s", headers=CONNECTION_CLOSE
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = header(request.scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "bad_request", "invalid Content-Length") from None
        if size > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPError(400, "bad_request", "client disconnected before the body ended") from None
    return b"".join(chunks)


def _too_large(limit: int) -> HTTPError:
    # Close the connection: otherwise uvicorn would go on reading (and discarding) the rest of the body.
    return HTTPError(413, "payload_too_large", f"body larger than {limit} bytes", headers=CONNECTION_CLOSE)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HTTPError(400, "invalid_json", "body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise validation_error("body", "must be a JSON object")
    return value


async def read_json_object(
    request: Request, keys: KeyChecker, limit: int, deadline: float | None, *, empty_ok: bool = False
) -> dict[str, Any]:
    """The steps every POST endpoint shares, in order: key (401 before reading), content type (415),
    body within ``limit`` and ``deadline`` (413/408), JSON object (400/422). ``empty_ok``: no body and no
    content type is an empty object."""
    if not keys.allows(request.scope["headers"]):
        raise UNAUTHORIZED
    content_type = header(request.scope, b"content-type")
    if not is_json_content_type(content_type):
        if not (empty_ok and content_type is None):
            raise HTTPError(415, "unsupported_media_type", "send application/json")
        if await read_body(request, limit, deadline):
            raise HTTPError(415, "unsupported_media_type", "send application/json")
        return {}
    raw = await read_body(request, limit, deadline)
    if empty_ok and not raw:
        return {}
    return parse_json_object(raw)


def execution_id_param(value: Any, field: str = "execution_id") -> str:
    """An execution id from a path, body or query field, or 422 naming ``field``."""
    if not isinstance(value, str) or not EXECUTION_ID_RE.fullmatch(value):
        raise validation_error(field, "must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value
