"""Every intake test runs on both raw-I/O transports (``BRIDGE_INTAKE_TRANSPORT``)."""

from __future__ import annotations

import pytest

from receiver.intake.resp import TRANSPORTS


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
