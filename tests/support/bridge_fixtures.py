"""Fixtures of the worker tests: the end-to-end stack of ``workers_stack``. When a stack stops, every
event in its stream is validated against the checked-in event schemas (``tests.support.event_contract``)."""

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
        _events_fit_the_contract(stack)


@pytest.fixture
def bare_bridge() -> Iterator[Bridge]:
    """The stack with no worker: the test starts, kills and replaces workers itself."""
    from tests.support.workers_stack import make_bridge

    for stack in make_bridge():
        yield stack
        _events_fit_the_contract(stack)


def _events_fit_the_contract(stack: Bridge) -> None:
    """Every event the stack's workers published validates against its checked-in JSON Schema."""
    import redis

    from tests.support.event_contract import check_stream

    try:
        check = check_stream(stack.redis, stack.settings.events_stream)
    except redis.ConnectionError:  # the test left its Redis stopped: nothing to read
        return
    assert not check.problems, "events off the contract:\n" + "\n".join(check.problems[:20])


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """The module-wide stack outlives each test: clear the vendors' fault knobs after every test."""
    yield
    if "bridge" in request.fixturenames:
        request.getfixturevalue("bridge").reset_faults()
