"""The receiver's ASGI application (plain Starlette routes, no BaseHTTPMiddleware on the hot path).

One process serves two listeners, told apart by the local port a connection arrived on:

* public (``BRIDGE_PUBLIC_HOST``/``BRIDGE_PUBLIC_PORT``): Kiban's callbacks and ``/healthz``, the only
  listener a proxy or Ingress exposes;
* internal (``BRIDGE_INTERNAL_HOST``/``BRIDGE_INTERNAL_PORT``): the commands, the timeline, ``/readyz``,
  ``/metrics``, ``/openapi.json`` and whatever ``internal_routes`` adds (``serve``: the operator console).

A route answers only on its listener (404 on the other); a connection on any other port gets 404 for
everything. ``PUBLIC_PATHS``/``INTERNAL_PATHS`` name the route templates of each.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

from receiver.endpoints import commands, timeline
from receiver.endpoints.kiban import CallbackEndpoints
from receiver.http import JSONBytes
from receiver.intake import Intake, IntakeUnavailableError
from receiver.intake.rqjob import JobRecorder
from receiver.metrics import ReceiverMetrics, RequestMetricsMiddleware
from receiver.openapi import openapi_document
from workers.core import tracing
from workers.core.contract import JOB_FUNCTIONS
from workers.core.crypto import require_keys
from workers.core.errors import SettingsError
from workers.core.settings import Settings, api_key_problems, get_settings


class ListenerRouter(Router):
    """Routes a request by the listener (local port) its connection arrived on; ``redirect_slashes`` off
    everywhere (a redirect would echo the client's ``Host``)."""

    def __init__(
        self,
        public: list[BaseRoute],
        internal: list[BaseRoute],
        *,
        public_port: int,
        internal_port: int,
        lifespan: Any,
    ) -> None:
        super().__init__(routes=[*public, *internal], redirect_slashes=False, lifespan=lifespan)
        self.listeners = {
            public_port: Router(routes=public, redirect_slashes=False),
            internal_port: Router(routes=internal, redirect_slashes=False),
        }
        self.nowhere = Router(routes=[], redirect_slashes=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        server = scope.get("server")
        port = server[1] if server and len(server) > 1 else None
        router = self.listeners.get(port, self.nowhere) if isinstance(port, int) else self.nowhere
        await router(scope, receive, send)


def check_listeners(settings: Settings) -> None:
    """Raise ``SettingsError`` unless the two listeners are on different ports."""
    if settings.bridge_public_port == settings.bridge_internal_port:
        raise SettingsError(
            "BRIDGE_PUBLIC_PORT and BRIDGE_INTERNAL_PORT must differ (the internal API is never public)"
        )


InternalRoutes = Callable[[Settings], list[BaseRoute]]
"""Builds extra routes for the internal listener from the settings (``workfloo-bridge serve`` passes the
operator console's): the receiver mounts them without importing what they come from."""


def create_app(
    settings: Settings | None = None, *, internal_routes: InternalRoutes | None = None
) -> Starlette:
    try:
        settings = settings or get_settings()
        require_keys(settings)  # the start form and the NIP are sealed before Redis sees them
        check_listeners(settings)
        if problems := api_key_problems(settings):  # Kiban's key and the command API's are strong, distinct
            raise SettingsError("; ".join(problems))
    except SettingsError as exc:  # `uvicorn receiver.app:create_app --factory`: one line, exit 2
        print(f"workfloo-bridge: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    tracing.configure(settings, "receiver")
    metrics = ReceiverMetrics()
    recorder = JobRecorder.from_settings(settings)
    # Build and verify the callback job scripts now: start-up fails if RQ's enqueue commands changed.
    job_scripts = [recorder.script(func) for func in JOB_FUNCTIONS.values()]
    callbacks = CallbackEndpoints(settings, metrics)
    document = openapi_document(settings)
    document["paths"].update(commands.openapi_paths(settings))
    document["paths"].update(timeline.openapi_paths())
    openapi_bytes = orjson.dumps(document)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        intake = Intake(settings, recorder, job_scripts)
        app.state.intake = intake
        metrics.round_trip_counts = lambda: (intake.committer.batches, intake.committer.commands)
        await intake.start()
        # Everything alive now (modules, schemas, RQ templates) lives as long as the process: keep it
        # out of the cyclic GC's generations so collections triggered by request garbage stay cheap.
        gc.freeze()
        try:
            yield
        finally:
            await intake.stop()

    async def healthz(request: Request) -> Response:
        return JSONBytes({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await request.app.state.intake.call("PING")
        except IntakeUnavailableError:
            return JSONBytes({"status": "unavailable", "redis": False}, status_code=503)
        return JSONBytes({"status": "ready", "redis": True})

    async def metrics_endpoint(request: Request) -> Response:
        intake: Intake = request.app.state.intake
        for queue, key in intake.queue_keys.items():
            try:
                depth = float(await intake.call("LLEN", key))
            except IntakeUnavailableError:
                depth = float("nan")
            metrics.queue_depth.labels(queue).set(depth)
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return Response(openapi_bytes, media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONBytes({"error": code, "detail": exc.detail}, exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONBytes({"error": "internal_error", "detail": None}, 500)

    public: list[BaseRoute] = [*callbacks.routes(), Route("/healthz", healthz, methods=["GET"])]
    internal: list[BaseRoute] = [
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *commands.routes(settings),
        *timeline.routes(settings),
        *(internal_routes(settings) if internal_routes is not None else []),
    ]
    app = Starlette(
        lifespan=lifespan,
        middleware=[Middleware(RequestMetricsMiddleware, metrics=metrics)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.router = ListenerRouter(
        public,
        internal,
        public_port=settings.bridge_public_port,
        internal_port=settings.bridge_internal_port,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    return app
