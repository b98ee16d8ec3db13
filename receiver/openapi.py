"""OpenAPI 3.1 document of the receiver's own endpoints (hand-written: it lists every status code each
endpoint can return). Command routes added in ``receiver/endpoints/commands.py`` may extend ``paths``."""

from __future__ import annotations

import copy
from typing import Any

from workers.core.contract import EXECUTION_ID_RE
from workers.core.settings import Settings

_ID = {"type": "string", "pattern": f"^{EXECUTION_ID_RE.pattern}$"}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def unavailable(description: str) -> dict[str, Any]:
    """The 503 every endpoint answers when Redis did not confirm (``receiver.http.redis_unavailable``)."""
    return _error(
        description, {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    )


def _callback_responses() -> dict[str, Any]:
    return {
        "200": {
            "description": "Stored (accepted) or already stored within the dedupe TTL (duplicate).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "400": _error("Body is not valid UTF-8 JSON, or Content-Length is not a number."),
        "401": _error("No configured key in any configured key header (also: no key configured at all)."),
        "408": _error(
            "The body did not arrive within BRIDGE_BODY_READ_TIMEOUT_SECONDS; the connection is closed.",
            {"Connection": {"schema": {"type": "string", "enum": ["close"]}}},
        ),
        "413": _error("Body larger than BRIDGE_MAX_BODY_BYTES (declared or counted while streaming)."),
        "415": _error("Content type is not application/json or application/*+json."),
        "422": _error("Schema violation; detail names each failing field."),
        "503": unavailable("Redis did not confirm the write in time; nothing was stored."),
    }


def _callback(
    summary: str, schema_ref: str, parameters: list[dict[str, Any]], optional: bool = False
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}, {"apiKeyCallback": []}],
            "parameters": parameters,
            "requestBody": {
                "required": not optional,
                "content": {"application/json": {"schema": {"$ref": schema_ref}}},
            },
            "responses": _callback_responses(),
        }
    }


_PATH_ID = {"name": "execution_id", "in": "path", "required": True, "schema": _ID}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "workfloo-bridge receiver",
        "version": "1",
        "description": "Kiban callbacks in, RQ jobs out. See docs/receiver.md.",
    },
    "paths": {
        "/v1/kiban/executions/{execution_id}/nip-events": _callback(
            "NIP delivery-status callback for one execution", "#/components/schemas/NipEvent", [_PATH_ID]
        ),
        "/v1/kiban/nip-events": _callback(
            "NIP delivery-status callback correlated by linkId", "#/components/schemas/NipEventWithLink", []
        ),
        "/v1/kiban/status": _callback(
            "Execution status webhook (WorkflooStatus)",
            "#/components/schemas/WorkflooStatus",
            [
                {"name": "x-kiban-event-id", "in": "header", "required": False, "schema": {"type": "string"}},
                {
                    "name": "x-kiban-event-type",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
        ),
        "/v1/kiban/executions/{execution_id}/finished": _callback(
            "End-of-workfloo callback for one execution (body optional)",
            "#/components/schemas/AnyObject",
            [_PATH_ID],
            optional=True,
        ),
        "/v1/kiban/finished": _callback(
            "End-of-workfloo callback; execution id in the body or the query",
            "#/components/schemas/FinishedBody",
            [{"name": "execution_id", "in": "query", "required": False, "schema": _ID}],
            optional=True,
        ),
        "/healthz": {
            "get": {
                "summary": "Process alive",
                "responses": {
                    "200": {
                        "description": "Alive",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis reachable",
                "responses": {
                    "200": {
                        "description": "Ready",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}},
                    },
                    "503": {
                        "description": "Redis unreachable",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Text exposition format", "content": {"text/plain": {}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "apiKeyCallback": {"type": "apiKey", "in": "header", "name": "xApiKeyCallback"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {}},
            },
            "Accepted": {
                "type": "object",
                "required": ["status", "event_id"],
                "properties": {
                    "status": {"enum": ["accepted", "duplicate"]},
                    "event_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                },
            },
            "NipEvent": {
                "type": "object",
                "required": ["event", "date"],
                "properties": {
                    "event": {"enum": ["PENDING", "SENT", "SUCCESS", "ERROR"]},
                    "date": {"type": "string", "minLength": 1, "maxLength": 64},
                    "linkId": {"type": ["string", "null"], "pattern": _ID["pattern"]},
                    "errorMessage": {"type": ["string", "null"], "maxLength": 4096},
                },
            },
            "NipEventWithLink": {
                "allOf": [{"$ref": "#/components/schemas/NipEvent"}, {"required": ["linkId"]}],
            },
            "WorkflooStatus": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {
                    "id": _ID,
                    "status": {"type": "string", "minLength": 1, "maxLength": 64},
                    "name": {"type": ["string", "null"]},
                    "currentNodeId": {"type": ["string", "null"]},
                    "currentNodeName": {"type": ["string", "null"]},
                    "currentNodeType": {"type": ["string", "null"]},
                },
            },
            "FinishedBody": {
                "type": "object",
                "description": "The first present of id, workflooId, idWorkfloo, executionId is the "
                "execution id; without any, the query parameter execution_id is required (else 422).",
                "properties": {
                    "id": _ID,
                    "workflooId": _ID,
                    "idWorkfloo": _ID,
                    "executionId": _ID,
                },
            },
            "AnyObject": {"type": "object"},
            "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
            "Ready": {
                "type": "object",
                "properties": {"status": {"type": "string"}, "redis": {"type": "boolean"}},
            },
        },
    },
}


def openapi_document(settings: Settings) -> dict[str, Any]:
    document = copy.deepcopy(_DOCUMENT)
    document["servers"] = [{"url": settings.bridge_public_url}]
    return document
