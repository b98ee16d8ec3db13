"""Resilience suite: a ``figures`` fixture every test records its measurements in, and a summary table
of all of them at the end of the run (``pytest_terminal_summary``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

_FIGURES = pytest.StashKey[list[tuple[str, str, str]]]()


class Figures:
    """``figures.add(section, name, value)``: printed at once and again in the end-of-run table."""

    def __init__(self, store: list[tuple[str, str, str]], section: str) -> None:
        self._store = store
        self.section = section

    def add(self, name: str, value: Any, section: str | None = None) -> None:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        self._store.append((section or self.section, name, text))
        print(f"[{section or self.section}] {name}: {text}")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FIGURES] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    store = request.config.stash[_FIGURES]
    yield Figures(store, request.node.name)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_FIGURES, [])
    if not rows:
        return
    terminalreporter.section("resilience figures")
    width_s = max(len(r[0]) for r in rows)
    width_n = max(len(r[1]) for r in rows)
    for section, name, value in rows:
        terminalreporter.write_line(f"{section:<{width_s}}  {name:<{width_n}}  {value}")
