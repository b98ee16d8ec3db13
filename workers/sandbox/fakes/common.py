"""What the fake Kiban and the fake Kompliant share around their own routes.

``fake_app`` assembles a fake: its control routes, ``POST /_fake/reset``, the ``/_fake/faults`` routes,
then its API routes, behind ``FaultMiddleware``, with the state on ``app.state.fake``. ``serve_main`` is
the ``python -m workers.sandbox.fakes.<name>`` entry: host, port and fault knobs plus the fake's own
options, then uvicorn.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from workers.sandbox.fakes.faults import FaultMiddleware, Faults, fault_routes


class FakeState(Protocol):
    def reset(self) -> None: ...


def _no_body(status: int) -> bytes:
    return b""


def fake_app(
    state: FakeState,
    faults: Faults,
    *,
    api_routes: Sequence[BaseRoute],
    control_routes: Sequence[BaseRoute] = (),
    error_body: Callable[[int], bytes] = _no_body,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> Starlette:
    """The fake's Starlette app; ``api_routes`` go last, so a catch-all API route cannot hide ``/_fake``."""

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await on_shutdown()

    routes = [
        *control_routes,
        Route("/_fake/reset", reset, methods=["POST"]),
        *fault_routes(faults),
        *api_routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.fake = state
    app.add_middleware(FaultMiddleware, faults=faults, error_body=error_body)
    return app


def serve_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    port: int,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    build: Callable[[argparse.Namespace, Faults], Starlette],
) -> None:
    """Parse ``--host``/``--port``/``--latency-ms``/``--faults`` and the fake's own options, serve the app."""
    import uvicorn

    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=port, help="port to listen on")
    add_arguments(parser)
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every response")
    parser.add_argument("--faults", default="{}", help='initial fault knobs as JSON, e.g. {"fail_next": 2}')
    args = parser.parse_args(argv)
    knobs = {"latency_ms": args.latency_ms, **json.loads(args.faults)}
    app = build(args, Faults(**knobs))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
