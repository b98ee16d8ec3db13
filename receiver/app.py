"""The receiver's ASGI application (plain Starlette routes, no BaseHTTPMiddleware on the hot path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workers.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = aioredis.Redis.from_url(
            settings.redis_url or "redis://127.0.0.1:6379/0",
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
        try:
            yield
        finally:
            await app.state.redis.aclose()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.redis.ping()
        except Exception:
            return JSONResponse({"status": "unavailable", "redis": False}, status_code=503)
        return JSONResponse({"status": "ready", "redis": True})

    app = Starlette(
        routes=[Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])],
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
