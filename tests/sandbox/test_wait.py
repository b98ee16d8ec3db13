"""The one poll loop: its value, its errors and its bool form."""

from __future__ import annotations

import itertools

import pytest

from workers.sandbox.wait import WaitTimeout, holds_within, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout=5, interval=0.001) == "done"


def test_ignored_errors_count_as_not_yet_and_are_named_on_timeout() -> None:
    def flaky() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(WaitTimeout, match=r"waiting for the port .*ConnectionError: refused"):
        wait_until(flaky, timeout=0.1, interval=0.01, what="the port", ignore=(ConnectionError,))


def test_other_errors_propagate_at_once() -> None:
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_until(broken, timeout=5, ignore=(ConnectionError,))


def test_holds_within_answers_a_bool() -> None:
    assert holds_within(lambda: True, timeout=0.1)
    assert not holds_within(lambda: False, timeout=0.05)
