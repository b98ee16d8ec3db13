"""Python API for internal services: enqueue bridge commands; each returns the command (= RQ job) id.

The form and the NIP are sealed with ``BRIDGE_DATA_KEYS`` before they reach Redis. Results and progress
arrive as events (``application.started``, ``nip.validated``, ``nip.resent``, ``action.failed``…);
``command_result`` reads the job's return value when needed. The receiver's HTTP
command endpoints build the same payloads with the ``workers.core.contract`` builders.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from workers.core.contract import (
    JOB_SERIALIZER,
    RESEND_FUNCTION,
    START_FUNCTION,
    VALIDATE_FUNCTION,
    abandoned_job_retry,
    new_command_id,
    resend_command,
    start_command,
    validate_command,
)
from workers.core.settings import Settings, get_settings
from workers.jobs import data_keys, state


def _options(s: Settings) -> dict[str, Any]:
    return {
        "job_timeout": s.job_timeout_seconds,
        "result_ttl": s.job_result_ttl_seconds,
        "failure_ttl": s.job_failure_ttl_seconds,
        "retry": abandoned_job_retry(s),
    }


def start_application(
    connection: redis.Redis,
    form: dict[str, Any],
    scenario_id: str | None = None,
    *,
    settings: Settings | None = None,
    idempotency_key: str | None = None,
) -> str:
    s = settings or get_settings()
    command_id = new_command_id("start", idempotency_key)
    command = start_command(command_id, form, scenario_id, data_keys(s))
    Queue(s.bridge_queue, connection=connection, serializer=JOB_SERIALIZER).enqueue(
        START_FUNCTION, command, job_id=command_id, **_options(s)
    )
    return command_id


def validate_nip(
    connection: redis.Redis, execution_id: str, nip: str, *, settings: Settings | None = None
) -> str:
    """The NIP is kept sealed under a short-TTL key; the job payload only carries a reference to it."""
    s = settings or get_settings()
    command_id = new_command_id("nip")
    state.stash_nip(connection, command_id, nip, data_keys(s))
    Queue(s.bridge_queue, connection=connection, serializer=JOB_SERIALIZER).enqueue(
        VALIDATE_FUNCTION, validate_command(command_id, execution_id), job_id=command_id, **_options(s)
    )
    return command_id


def resend_nip(connection: redis.Redis, execution_id: str, *, settings: Settings | None = None) -> str:
    s = settings or get_settings()
    command_id = new_command_id("resend")
    Queue(s.bridge_queue, connection=connection, serializer=JOB_SERIALIZER).enqueue(
        RESEND_FUNCTION, resend_command(command_id, execution_id), job_id=command_id, **_options(s)
    )
    return command_id


def command_result(connection: redis.Redis, command_id: str) -> dict[str, Any] | None:
    """``{"status": …, "result": …}`` of a command job, or None when unknown/expired."""
    try:
        job = Job.fetch(command_id, connection=connection, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        return None
    return {"status": str(job.get_status()), "result": job.return_value()}
