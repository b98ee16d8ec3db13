"""Fault knobs shared by the fake vendors: latency, bursts of 503/429, dropped and duplicated callbacks.

Set them at construction (``Faults(latency_ms=50)``) or at run time from any process with
``POST /_fake/faults`` (JSON with any subset of the knobs; ``GET`` shows them, ``POST /_fake/faults/reset``
clears them). ``/_fake/*`` routes themselves are never slowed down or failed.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class FaultKnobs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, le=60_000, description="Added to every vendor request.")
    fail_next: int = Field(default=0, ge=0, description="The next N vendor requests fail with fail_status.")
    fail_status: int = Field(default=503, ge=400, le=599, description="Status of the failed requests.")
    fail_retry_after: str | None = Field(
        default="1", description="Retry-After header on failed requests (seconds or HTTP-date); null: none."
    )
    drop_callbacks_next: int = Field(default=0, ge=0, description="The next N callbacks are not sent.")
    drop_callbacks_probability: float = Field(default=0, ge=0, le=1, description="Chance a callback is lost.")
    duplicate_callbacks: int = Field(default=1, ge=1, le=10, description="Send each callback k times.")


class Faults:
    """Thread-safe knob holder; the fakes consult it per request and per callback."""

    def __init__(self, **knobs: Any) -> None:
        self._lock = threading.Lock()
        self._knobs = FaultKnobs(**knobs)
        self._random = random.Random()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Vendor requests inside the fake right now (tests wait for 0 before resetting)."""
        with self._lock:
            return self._in_flight

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def knobs(self) -> FaultKnobs:
        with self._lock:
            return self._knobs

    def update(self, changes: Mapping[str, Any]) -> FaultKnobs:
        """Merge ``changes`` into the current knobs (validated; raises ``ValidationError``)."""
        with self._lock:
            self._knobs = FaultKnobs.model_validate({**self._knobs.model_dump(), **dict(changes)})
            return self._knobs

    def reset(self) -> FaultKnobs:
        with self._lock:
            self._knobs = FaultKnobs()
            return self._knobs

    def take_failure(self) -> tuple[int, str | None] | None:
        """Consume one injected failure, if any: (status, Retry-After)."""
        with self._lock:
            if self._knobs.fail_next <= 0:
                return None
            self._knobs = self._knobs.model_copy(update={"fail_next": self._knobs.fail_next - 1})
            return self._knobs.fail_status, self._knobs.fail_retry_after

    def callback_copies(self) -> int:
        """How many times to send the next callback: 0 when it is dropped."""
        with self._lock:
            if self._knobs.drop_callbacks_next > 0:
                self._knobs = self._knobs.model_copy(
                    update={"drop_callbacks_next": self._knobs.drop_callbacks_next - 1}
                )
                return 0
            if self._knobs.drop_callbacks_probability and (
                self._random.random() < self._knobs.drop_callbacks_probability
            ):
                return 0
            return self._knobs.duplicate_callbacks


class FaultMiddleware:
    """Pure ASGI wrapper applying latency and injected failures to every non-``/_fake`` request."""

    def __init__(
        self, app: ASGIApp, faults: Faults, error_body: Callable[[int], bytes] = lambda status: b""
    ) -> None:
        self.app = app
        self.faults = faults
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith("/_fake"):
            await self.app(scope, receive, send)
            return
        self.faults._enter()
        try:
            # Decide on arrival, so a request still sleeping cannot consume a failure set later.
            failure = self.faults.take_failure()
            latency = self.faults.knobs.latency_ms
            if latency:
                await asyncio.sleep(latency / 1000)
            if failure is None:
                await self.app(scope, receive, send)
                return
            status, retry_after = failure
            body = self.error_body(status)
            headers = [(b"content-length", str(len(body)).encode())]
            if body:
                headers.append((b"content-type", b"application/json"))
            if retry_after:
                headers.append((b"retry-after", retry_after.encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.faults._leave()


def fault_routes(faults: Faults) -> list[Route]:
    async def show(request: Request) -> Response:
        return JSONResponse(faults.knobs.model_dump())

    async def change(request: Request) -> Response:
        try:
            changes = await request.json()
        except ValueError:
            return JSONResponse({"error": "bad_json", "detail": "body must be JSON"}, status_code=400)
        if not isinstance(changes, dict):
            return JSONResponse({"error": "bad_json", "detail": "body must be an object"}, status_code=400)
        try:
            knobs = faults.update(changes)
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return JSONResponse({"error": "invalid_knobs", "detail": detail}, status_code=422)
        return JSONResponse(knobs.model_dump())

    async def reset(request: Request) -> Response:
        return JSONResponse(faults.reset().model_dump())

    return [
        Route("/_fake/faults", show, methods=["GET"]),
        Route("/_fake/faults", change, methods=["POST"]),
        Route("/_fake/faults/reset", reset, methods=["POST"]),
    ]
