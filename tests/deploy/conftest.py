"""Fixtures shared by the deploy checks."""

from __future__ import annotations

import pytest

from workers.core.settings import Settings

# The longest a bridge job may run: RQ's job timeout. 180 s is the documented ceiling; if the
# settings carry a job timeout, the larger of the two is used.
DOCUMENTED_JOB_TIMEOUT_SECONDS = 180


@pytest.fixture(scope="session")
def job_timeout_seconds() -> int:
    field = Settings.model_fields.get("job_timeout_seconds")
    default = field.default if field is not None else None
    return max(DOCUMENTED_JOB_TIMEOUT_SECONDS, default) if isinstance(default, int) else 180
