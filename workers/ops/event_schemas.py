"""The event contract, generated from the models of ``workers.core.events``.

Three outputs, each checked in and compared with a fresh rendering by the tests, so none can drift from
the code that publishes the events:

- ``docs/schemas/events/``: JSON Schema (draft-07) of the envelope and of every event type (the envelope
  with ``type`` fixed and ``data`` the type's model);
- ``docs/asyncapi.yaml``: an AsyncAPI 3 document of the stream, the per-type pub/sub channels and the
  signed HTTP webhooks, whose messages point at those schemas;
- ``consumer/src/workfloo_bridge_consumer/events.py``: the consumer package's typed events (``EventType``
  and a ``TypedDict`` per data model), for subscribers that install only that package.

Regenerate from the repository's top folder with ``python -m workers.ops.event_schemas``.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workers.core import keys
from workers.core.events import (
    DATA_MODELS,
    SCHEMA_VERSION,
    ULID_PATTERN,
    EventData,
    EventType,
    Source,
)
from workers.core.settings import Settings

SCHEMA_DIR = "docs/schemas/events"
ASYNCAPI = "docs/asyncapi.yaml"
CONSUMER_EVENTS = "consumer/src/workfloo_bridge_consumer/events.py"
JSON_SCHEMA = "http://json-schema.org/draft-07/schema#"
SCHEMA_FORMAT = "application/schema+json;version=draft-07"
SCHEMA_ID = "https://workfloo-bridge.invalid/schemas/events/"
"""Base of each schema's ``$id``: a name, never fetched (the files are in the repository)."""


def schema_file(event_type: str) -> str:
    return f"{event_type}.json"


def _project_version() -> str:
    try:
        return version("workfloo-bridge")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that is not installed
        return "0.0.0"


def _data_schema(model: type[EventData]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's schema with its nested models moved to ``definitions`` (draft-07)."""
    schema = model.model_json_schema(ref_template="#/definitions/{model}")
    definitions = schema.pop("$defs", {})
    return schema, definitions


def _envelope(event_type: str | None, data: dict[str, Any]) -> dict[str, Any]:
    type_schema: dict[str, Any] = (
        {"const": event_type} if event_type else {"enum": [member.value for member in EventType]}
    )
    return {
        "type": "object",
        "additionalProperties": True,
        "required": ["id", "type", "occurred_at", "execution_id", "source", "schema_version", "data"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": ULID_PATTERN,
                "description": "ULID, sorts by creation time; the idempotency key (and the webhook-id)",
            },
            "type": {**type_schema, "type": "string", "description": "the event type"},
            "occurred_at": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
            "execution_id": {
                "type": ["string", "null"],
                "description": "the Kiban workfloo execution (one application); null when not tied to one",
            },
            "source": {"type": "string", "enum": [member.value for member in Source]},
            "schema_version": {"type": "integer", "const": SCHEMA_VERSION},
            "data": data,
        },
    }


def envelope_schema() -> dict[str, Any]:
    """Every event: the envelope, ``data`` any object."""
    return {
        "$schema": JSON_SCHEMA,
        "$id": SCHEMA_ID + "envelope.json",
        "title": "workfloo-bridge event envelope",
        "description": "Every event has this envelope; only data varies by type (docs/events.md).",
        **_envelope(None, {"type": "object", "additionalProperties": True}),
    }


def event_schema(event_type: EventType) -> dict[str, Any]:
    """One event type: the envelope with ``type`` fixed and ``data`` the type's model."""
    data, definitions = _data_schema(DATA_MODELS[event_type])
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA,
        "$id": SCHEMA_ID + schema_file(event_type.value),
        "title": event_type.value,
        "description": data.get("description", ""),
        **_envelope(event_type.value, data),
    }
    if definitions:
        schema["definitions"] = definitions
    return schema


def schemas() -> dict[str, dict[str, Any]]:
    """File name → schema, for ``docs/schemas/events/``."""
    out = {"envelope.json": envelope_schema()}
    for event_type in EventType:
        out[schema_file(event_type.value)] = event_schema(event_type)
    return out


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- AsyncAPI ------------------------------------------------------------------------------------


def _summary(model: type[EventData]) -> str:
    text = (model.__doc__ or "").split(": ", 1)[-1].strip()
    return text[:1].upper() + text[1:]


def asyncapi() -> dict[str, Any]:
    messages = {
        event_type.value: {
            "name": event_type.value,
            "title": event_type.value,
            "summary": _summary(DATA_MODELS[event_type]),
            "contentType": "application/json",
            "payload": {
                "schemaFormat": SCHEMA_FORMAT,
                "schema": {"$ref": f"./schemas/events/{schema_file(event_type.value)}"},
            },
        }
        for event_type in EventType
    }
    refs = {name: {"$ref": f"#/components/messages/{name}"} for name in messages}

    def channel_messages(channel: str) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in messages]

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "workfloo-bridge events",
            "version": _project_version(),
            "description": (
                "What happened to each credit application, as published by workfloo-bridge: one envelope "
                "for every event (docs/schemas/events/envelope.json), data by type. Consumers must "
                "deduplicate on the event id and ignore fields they do not know. The catalogue and the "
                "delivery contracts are in docs/events.md."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {
                "host": "localhost:6379",
                "protocol": "redis",
                "description": "The bridge's Redis (REDIS_URL; rediss:// for TLS).",
            },
            "subscriber": {
                "host": "subscriber.example.com",
                "protocol": "https",
                "description": "An HTTP subscriber's own endpoint, configured in BRIDGE_HTTP_SUBSCRIBERS.",
            },
        },
        "channels": {
            "eventStream": {
                "address": Settings.model_fields["events_stream"].default,
                "title": "Durable event stream",
                "description": (
                    "Redis Stream (BRIDGE_EVENTS_STREAM). Each entry has the fields type, execution_id "
                    "(empty when none) and event (the envelope as JSON). Read with consumer groups: "
                    "at-least-once while the entry is in the stream; entries delivered more than "
                    f"BRIDGE_EVENTS_MAX_DELIVERIES times go to {keys.DEAD_LETTER_STREAM}."
                ),
                "servers": [{"$ref": "#/servers/redis"}],
                "messages": refs,
            },
            "liveEvents": {
                "address": keys.channel("{type}"),
                "title": "Live events by type",
                "description": (
                    "Redis pub/sub, one channel per event type (PSUBSCRIBE patterns such as "
                    "workfloo:events:nip.* work): the envelope JSON of each event published while "
                    "subscribed; at-most-once, nothing is kept."
                ),
                "parameters": {
                    "type": {
                        "enum": [member.value for member in EventType],
                        "description": "the event type",
                    }
                },
                "servers": [{"$ref": "#/servers/redis"}],
                "messages": refs,
            },
            "httpSubscriber": {
                "address": "/",
                "title": "Signed HTTP webhooks",
                "description": (
                    "Each matching event POSTed as the envelope JSON to the subscriber's URL, signed per "
                    "Standard Webhooks (webhook-id = the event id, webhook-timestamp, webhook-signature "
                    "v1,<base64 HMAC-SHA256>). At-least-once within the retry schedule "
                    "(BRIDGE_HTTP_SUBSCRIBERS_RETRY_SCHEDULE); a 410 disables the subscriber."
                ),
                "servers": [{"$ref": "#/servers/subscriber"}],
                "messages": refs,
                "bindings": {"http": {"bindingVersion": "0.3.0"}},
            },
        },
        "operations": {
            "consumeStream": {
                "action": "receive",
                "channel": {"$ref": "#/channels/eventStream"},
                "summary": "Read the stream as a member of a consumer group; XACK after handling.",
                "messages": channel_messages("eventStream"),
            },
            "listenLive": {
                "action": "receive",
                "channel": {"$ref": "#/channels/liveEvents"},
                "summary": "SUBSCRIBE or PSUBSCRIBE for live views; reconcile from the stream.",
                "messages": channel_messages("liveEvents"),
            },
            "receiveWebhook": {
                "action": "receive",
                "channel": {"$ref": "#/channels/httpSubscriber"},
                "summary": "Verify the signature, deduplicate on webhook-id, answer 2xx.",
                "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
                "messages": channel_messages("httpSubscriber"),
            },
        },
        "components": {
            "messages": messages,
        },
    }


def asyncapi_yaml() -> str:
    import yaml

    header = (
        "# Generated by `python -m workers.ops.event_schemas` from workers/core/events.py: do not edit.\n"
    )
    document = json.loads(json.dumps(asyncapi()))  # no shared objects, so no YAML anchors
    body: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110)
    return header + body


# --- the consumer package's typed events ---------------------------------------------------------


def _python_type(annotation: Any, nested: dict[str, type[BaseModel]]) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(json.dumps(arg) for arg in typing.get_args(annotation)) + "]"
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_python_type(arg, nested) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        nested[annotation.__name__] = annotation
        return annotation.__name__
    if annotation in (str, int, bool, float):
        return str(annotation.__name__)
    raise TypeError(f"no TypedDict rendering for {annotation!r}")


def _typed_dict(model: type[BaseModel], nested: dict[str, type[BaseModel]]) -> list[str]:
    doc = (model.__doc__ or "").strip()
    lines = [f"class {model.__name__}(TypedDict):", f'    """{doc}"""', ""]
    for name, field in model.model_fields.items():
        rendered = _python_type(field.annotation, nested)
        if not field.is_required():  # a field with a default may be absent from an event
            rendered = f"NotRequired[{rendered}]"
        if field.description:
            lines.append(f"    # {field.description}")
        line = f"    {name}: {rendered}"
        if len(line) > 110 and rendered.startswith("Literal["):  # one value a line, as ruff format has it
            values = rendered.removeprefix("Literal[").removesuffix("]").split(", ")
            line = f"    {name}: Literal[\n" + "".join(f"        {value},\n" for value in values) + "    ]"
        lines.append(line)
    return lines


def consumer_events_py() -> str:
    models: dict[str, type[BaseModel]] = {}
    for model in DATA_MODELS.values():
        models.setdefault(model.__name__, model)
    nested: dict[str, type[BaseModel]] = {}
    blocks: list[list[str]] = []
    for data_model in models.values():
        blocks.append(_typed_dict(data_model, nested))
    nested_blocks = [_typed_dict(model, {}) for name, model in nested.items() if name not in models]
    members = [f'    {member.name} = "{member.value}"' for member in EventType]
    exported = ["DATA_TYPES", "SCHEMA_VERSION", "EventType", "Source", *nested, *models]
    mapping = [f"    EventType.{member.name}: {DATA_MODELS[member].__name__}," for member in EventType]
    out = [
        '"""Typed events of workfloo-bridge: ``EventType`` and the ``data`` of each type.',
        "",
        "Generated by ``python -m workers.ops.event_schemas`` from the bridge's ``workers/core/events.py``:",
        "do not edit. Consumers must ignore keys they do not know; a ``NotRequired`` key may be absent.",
        "(No ``from __future__ import annotations`` here: ``NotRequired`` must stay visible at run time.)",
        '"""',
        "",
        "from enum import StrEnum",
        "from typing import Literal, NotRequired, TypedDict",
        "",
        f"SCHEMA_VERSION = {SCHEMA_VERSION}",
        "",
        "",
        "class EventType(StrEnum):",
        *members,
        "",
        "",
        "class Source(StrEnum):",
        *[f'    {member.name} = "{member.value}"' for member in Source],
        "",
    ]
    for block in [*nested_blocks, *blocks]:
        out += ["", *block, ""]
    out += [
        "",
        "DATA_TYPES: dict[EventType, type] = {",
        *mapping,
        "}",
        '"""The ``TypedDict`` of each event type\'s ``data``."""',
        "",
        "__all__ = [",
        *[f'    "{name}",' for name in sorted(exported, key=lambda name: (not name.isupper(), name))],
        "]",
    ]
    return "\n".join(out) + "\n"


# --- all outputs ---------------------------------------------------------------------------------


def render_all() -> dict[str, str]:
    """Repository path → content of every generated file."""
    out = {f"{SCHEMA_DIR}/{name}": _json(schema) for name, schema in schemas().items()}
    out[ASYNCAPI] = asyncapi_yaml()
    out[CONSUMER_EVENTS] = consumer_events_py()
    return out


def write_all(root: Path) -> list[str]:
    """Write every generated file under ``root``; remove schema files of types that no longer exist."""
    rendered = render_all()
    schema_dir = root / SCHEMA_DIR
    schema_dir.mkdir(parents=True, exist_ok=True)
    for stale in schema_dir.glob("*.json"):
        if f"{SCHEMA_DIR}/{stale.name}" not in rendered:
            stale.unlink()
    for path, content in rendered.items():
        (root / path).write_text(content, encoding="utf-8")
    return sorted(rendered)


if __name__ == "__main__":  # pragma: no cover
    for written in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()):
        print(written)
