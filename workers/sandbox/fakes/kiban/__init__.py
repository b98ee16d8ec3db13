"""Fake Kiban workfloo API for tests and the demo (no network): ``state`` (the state machine and data),
``api`` (the Kiban API handlers), ``control`` (the ``/_fake`` routes), ``app`` (``create_app``). Run it as
a process with ``python -m workers.sandbox.fakes.kiban --port N ...``."""

from workers.sandbox.fakes.kiban.app import create_app
from workers.sandbox.fakes.kiban.state import FakeExecution, FakeKibanState

__all__ = ["FakeExecution", "FakeKibanState", "create_app"]
