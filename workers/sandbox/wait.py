"""One poll loop for the demo, the fakes, the tests and the benchmarks.

``wait_until`` polls a predicate until it returns something truthy (and returns that), fails with
``WaitTimeout`` naming what it waited for, and, given the child process the condition depends on, fails
as soon as that child exits, with the tail of its log. ``holds_within`` is the same loop for callers that
want a bool instead of an exception.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import httpx

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time, or the child it depended on exited first."""


class Watched(Protocol):
    """What ``wait_until`` needs of a child process (``workers.sandbox.supervisor.Child``)."""

    name: str

    def alive(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def log_tail(self, chars: int = 2000) -> str: ...


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 5.0,
    interval: float = 0.05,
    what: str = "the condition",
    child: Watched | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns a truthy value, which is returned.

    Exceptions of the ``ignore`` types count as "not yet" (the last one is named on timeout); any other
    propagates. Raises ``WaitTimeout`` after ``timeout`` s, or at once when ``child`` has exited.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if child is not None and not child.alive():
            raise WaitTimeout(
                f"{child.name} exited with code {child.exit_code()} before {what}:\n{child.log_tail()}"
            )
        try:
            value = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {type(last_error).__name__}: {last_error})"
            if child is not None:
                message += f"\n{child.log_tail()}"
            raise WaitTimeout(message)
        time.sleep(interval)


def holds_within(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """``wait_until`` answering True/False instead of raising (the fakes' inspection helpers)."""
    try:
        wait_until(predicate, timeout=timeout, interval=interval)
    except WaitTimeout:
        return False
    return True


def wait_http(url: str, *, timeout: float, child: Watched | None = None, ok: Sequence[int] = (200,)) -> None:
    """Wait until GET ``url`` answers with one of ``ok`` (any status when ``ok`` is empty)."""

    def answered() -> bool:
        response = httpx.get(url, timeout=1.0)
        return not ok or response.status_code in ok

    wait_until(answered, timeout=timeout, what=f"GET {url}", child=child, ignore=(httpx.HTTPError,))


def wait_port(port: int, *, timeout: float, child: Watched | None = None, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on ``host:port``."""

    def accepts() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    wait_until(
        accepts, timeout=timeout, what=f"{host}:{port} to accept connections", child=child, ignore=(OSError,)
    )


__all__ = ["WaitTimeout", "Watched", "holds_within", "wait_http", "wait_port", "wait_until"]
