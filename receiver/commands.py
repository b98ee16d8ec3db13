"""Command endpoints (``POST /v1/applications``, …): the workers helper fills this module.

Extension point: ``create_app`` appends ``routes(settings)`` to the receiver's routes. Handlers reach
shared pieces through ``request.app.state``: ``settings``, ``redis`` (async client), ``intake``
(``receiver.intake.Intake``: ``await intake.enqueue(job_id, "dotted.path", payload, description=…,
stamp=…)`` writes an idempotent RQ job in the shared round trip) and ``metrics``.
Describe new paths in ``openapi_paths`` below (merged into ``GET /openapi.json``).
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

from workers.settings import Settings


def routes(settings: Settings) -> list[BaseRoute]:
    """Routes to add to the receiver app."""
    return []


def openapi_paths(settings: Settings) -> dict[str, Any]:
    """OpenAPI ``paths`` entries of the routes above (merged into ``GET /openapi.json``)."""
    return {}
