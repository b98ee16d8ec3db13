"""Operator tests run with none of the caller's settings, so a developer's environment cannot leak in."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

_ENV_PREFIXES = ("REDIS_", "BRIDGE_", "KIBAN_", "KOMPLIANT_", "EVENTS_", "LOG_")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "ERROR")
    yield monkeypatch
