"""The fake Kiban's ``/_fake`` routes: what tests and the demo read or do from any process (list and
inspect executions, abandon one as from the console, read the callbacks sent). Never slowed or failed by
the fault knobs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.sandbox.fakes.kiban.state import EVENT_FINISHED, FakeKibanState, now_iso


def control_routes(state: FakeKibanState) -> list[Route]:
    async def fake_executions(request: Request) -> Response:
        with state.lock:
            return JSONResponse([state.summary(ex) for ex in state.executions.values()])

    async def fake_execution(request: Request) -> Response:
        with state.lock:
            ex = state.executions.get(request.path_params["id"])
            if ex is None:
                return JSONResponse({"error": "not_found", "detail": "no such execution"}, status_code=404)
            return JSONResponse({**state.summary(ex), "status_body": state.status_body(ex)})

    async def fake_abandon(request: Request) -> Response:
        """Cancel by hand, as from the console (sets cancelledAt/cancelledBy)."""
        with state.lock:
            ex = state.executions.get(request.path_params["id"])
            if ex is None:
                return JSONResponse({"error": "not_found", "detail": "no such execution"}, status_code=404)
            if not ex.is_terminal:
                ex.status, ex.cancelled_at, ex.cancelled_by = "ABANDONED", now_iso(), "console@fake.kiban"
                state._touch(ex)
                state.notify(ex, EVENT_FINISHED)
                state._end_callback(ex)
            return JSONResponse(state.summary(ex))

    async def fake_deliveries(request: Request) -> Response:
        # ``?since=N`` skips the first N records, so a poller reads only new deliveries (O(new), not O(all)).
        try:
            since = max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return JSONResponse(
                {"error": "bad_request", "detail": "since must be an integer"}, status_code=400
            )
        return JSONResponse([d.public() for d in state.sender.snapshot()[since:]])

    return [
        Route("/_fake/executions", fake_executions, methods=["GET"]),
        Route("/_fake/executions/{id}", fake_execution, methods=["GET"]),
        Route("/_fake/executions/{id}/abandon", fake_abandon, methods=["POST"]),
        Route("/_fake/deliveries", fake_deliveries, methods=["GET"]),
    ]
