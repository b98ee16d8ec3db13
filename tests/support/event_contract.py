"""Events against the checked-in contract: every entry of a stream validated against the JSON Schema of
its type in ``docs/schemas/events/`` (the files the consumer package and the AsyncAPI document point at).

``bridge_fixtures`` runs this on the stream of every end-to-end stack when the stack stops, so every event
the workers publish in those tests is checked; ``tests/e2e/test_event_contract.py`` runs it on purpose.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import redis
from jsonschema import Draft7Validator, FormatChecker

from tests import ROOT

SCHEMAS = ROOT / "docs" / "schemas" / "events"


@cache
def validator(name: str) -> Draft7Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return Draft7Validator(schema, format_checker=FormatChecker())


@dataclass
class StreamCheck:
    types: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def problems_of(envelope: dict[str, Any]) -> list[str]:
    """Why one envelope does not fit the envelope schema and its type's schema (empty when it does)."""
    found = [f"envelope: {error.message}" for error in validator("envelope.json").iter_errors(envelope)]
    type_ = envelope.get("type")
    if not (SCHEMAS / f"{type_}.json").exists():
        return [*found, f"no schema for type {type_!r}"]
    found += [
        f"{type_} at {'/'.join(map(str, error.absolute_path)) or '.'}: {error.message}"
        for error in validator(f"{type_}.json").iter_errors(envelope)
    ]
    return found


def check_stream(client: redis.Redis, stream: str) -> StreamCheck:
    """Validate every entry of ``stream``: the envelope JSON, and the entry's ``type`` field matching it."""
    check = StreamCheck()
    for entry_id, fields in client.xrange(stream):
        envelope = json.loads(fields[b"event"])
        check.types[str(envelope.get("type"))] += 1
        where = f"{stream} {entry_id.decode()}"
        if fields.get(b"type", b"").decode() != envelope.get("type"):
            check.problems.append(f"{where}: stream field type differs from the envelope's")
        check.problems += [f"{where}: {problem}" for problem in problems_of(envelope)]
    return check
