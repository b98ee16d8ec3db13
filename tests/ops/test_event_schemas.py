"""The event contract files are generated from the models and current: the JSON Schemas, the AsyncAPI
document and the consumer package's typed events (regenerate with `python -m workers.ops.event_schemas`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import ValidationError

from tests import ROOT
from workers.core.events import DATA_MODELS, Event, EventType, NipFailedData
from workers.ops import event_schemas

REGENERATE = "run: python -m workers.ops.event_schemas"


def test_every_generated_file_is_current() -> None:
    rendered = event_schemas.render_all()
    for path, content in rendered.items():
        assert (ROOT / path).read_text(encoding="utf-8") == content, f"{path} is stale; {REGENERATE}"
    checked_in = {f"{event_schemas.SCHEMA_DIR}/{p.name}" for p in (ROOT / event_schemas.SCHEMA_DIR).glob("*")}
    assert checked_in == {path for path in rendered if path.startswith(event_schemas.SCHEMA_DIR)}


def test_every_event_type_has_a_data_model_and_a_valid_schema() -> None:
    assert set(DATA_MODELS) == set(EventType)
    for name, schema in event_schemas.schemas().items():
        Draft7Validator.check_schema(schema)
        assert name == "envelope.json" or schema["properties"]["type"]["const"] == name.removesuffix(".json")


def test_every_event_type_is_in_the_catalogue() -> None:
    catalogue = (ROOT / "docs" / "events.md").read_text()
    for event_type in EventType:
        assert f"`{event_type.value}`" in catalogue, event_type


def test_asyncapi_document_covers_every_type_on_each_channel() -> None:
    document = yaml.safe_load((ROOT / event_schemas.ASYNCAPI).read_text())
    assert document["asyncapi"].startswith("3.")
    messages = document["components"]["messages"]
    assert set(messages) == {t.value for t in EventType}
    for message in messages.values():
        target = ROOT / "docs" / message["payload"]["schema"]["$ref"]
        assert target.exists(), target
    assert {c["address"] for c in document["channels"].values()} >= {
        "workfloo:events",
        "workfloo:events:{type}",
    }
    for operation in document["operations"].values():
        assert operation["action"] == "receive"
        channel = operation["channel"]["$ref"].rsplit("/", 1)[1]
        for ref in operation["messages"]:
            _, _, name, _, message = ref["$ref"].split("/")
            assert name == channel and message in document["channels"][channel]["messages"]


def test_typed_data_reads_each_type_and_refuses_what_does_not_fit() -> None:
    event = Event(type=EventType.NIP_FAILED, data={"date": "d", "link_id": None, "error_message": None,
                                                  "recoverable": True, "resend": 1, "why": "will_resend",
                                                  "added_later": 1})  # fmt: skip
    typed = event.typed_data()
    assert isinstance(typed, NipFailedData) and typed.resend == 1
    with pytest.raises(ValidationError):
        Event(type=EventType.NIP_FAILED, data={"date": "d"}).typed_data()


def test_consumer_typed_events_match_the_models() -> None:
    spec = importlib.util.spec_from_file_location("generated_events", ROOT / event_schemas.CONSUMER_EVENTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {member.value for member in module.EventType} == {member.value for member in EventType}
    for event_type, model in DATA_MODELS.items():
        typed_dict = module.DATA_TYPES[module.EventType(event_type.value)]
        assert typed_dict.__name__ == model.__name__
        assert set(typed_dict.__annotations__) == set(model.model_fields)
        required = {name for name, field in model.model_fields.items() if field.is_required()}
        assert typed_dict.__required_keys__ == required, event_type
    assert json.loads(json.dumps(module.SCHEMA_VERSION)) == 1


# The official AsyncAPI 3.0.0 JSON Schema, copied verbatim from the npm package @asyncapi/specs 6.11.1
# (schemas/3.0.0-without-$id.json, Apache-2.0, the AsyncAPI Initiative), so the check runs offline.
ASYNCAPI_SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")
ASYNCAPI_SCHEMA_SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    assert hashlib.sha256(ASYNCAPI_SCHEMA.read_bytes()).hexdigest() == ASYNCAPI_SCHEMA_SHA256
    validator = Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    document = yaml.safe_load((ROOT / event_schemas.ASYNCAPI).read_text())
    assert [error.message for error in validator.iter_errors(document)] == []
    broken = {**document, "operations": {"x": {**document["operations"]["consumeStream"], "action": "pull"}}}
    assert list(validator.iter_errors(broken)), "the official schema would catch a wrong operation"
