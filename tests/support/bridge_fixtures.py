"""Fixtures of the worker tests: the end-to-end stack of ``workers_stack``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.workers_stack import Bridge


@pytest.fixture(scope="module")
def bridge() -> Iterator[Bridge]:
    """The stack with two long-running workers (both may run RQ's scheduler; one holds its lock)."""
    from tests.support.workers_stack import make_bridge

    for stack in make_bridge():
        stack.start_worker()
        stack.start_worker()
        yield stack


@pytest.fixture
def bare_bridge() -> Iterator[Bridge]:
    """The stack with no worker: the test starts, kills and replaces workers itself."""
    from tests.support.workers_stack import make_bridge

    yield from make_bridge()


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """The module-wide stack outlives each test: clear the vendors' fault knobs after every test."""
    yield
    if "bridge" in request.fixturenames:
        request.getfixturevalue("bridge").reset_faults()
