"""Python API for internal services: enqueue bridge commands; each returns the command (= RQ job) id.

Results and progress arrive as events (``application.started``, ``nip.validated``, ``nip.resent``,
``action.failed``…); ``command_result`` reads the job's return value when needed. The receiver's HTTP
command endpoints (``receiver/commands.py``) build the same payloads with the ``*_command`` helpers and
write them through the receiver's intake.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from ulid import ULID

from workers import state
from workers.settings import Settings, get_settings

START_FUNCTION = "workers.jobs.commands.start_application"
VALIDATE_FUNCTION = "workers.jobs.commands.validate_nip"
RESEND_FUNCTION = "workers.jobs.commands.resend_nip"


def _options(s: Settings) -> dict[str, Any]:
    return {
        "job_timeout": s.job_timeout_seconds,
        "result_ttl": s.job_result_ttl_seconds,
        "failure_ttl": s.job_failure_ttl_seconds,
    }


def new_command_id(kind: str, idempotency_key: str | None = None) -> str:
    """``cmd-<kind>-<ulid>``, or a digest of the caller's idempotency key (same key → same command)."""
    if idempotency_key:
        digest = hashlib.sha256(f"{kind}\n{idempotency_key}".encode()).hexdigest()[:26]
        return f"cmd-{kind}-{digest}"
    return f"cmd-{kind}-{str(ULID()).lower()}"


def start_command(command_id: str, form: dict[str, Any], scenario_id: str | None) -> dict[str, Any]:
    return {"command_id": command_id, "form": dict(form), "scenario_id": scenario_id}


def validate_command(command_id: str, execution_id: str) -> dict[str, Any]:
    return {"command_id": command_id, "execution_id": execution_id, "nip_ref": command_id}


def resend_command(command_id: str, execution_id: str) -> dict[str, Any]:
    return {"command_id": command_id, "execution_id": execution_id, "resend": None}


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
    Queue(s.bridge_queue, connection=connection).enqueue(
        START_FUNCTION, start_command(command_id, form, scenario_id), job_id=command_id, **_options(s)
    )
    return command_id


def validate_nip(
    connection: redis.Redis, execution_id: str, nip: str, *, settings: Settings | None = None
) -> str:
    """The NIP is kept under a short-TTL key; the job payload only carries a reference to it."""
    s = settings or get_settings()
    command_id = new_command_id("nip")
    state.stash_nip(connection, command_id, nip)
    Queue(s.bridge_queue, connection=connection).enqueue(
        VALIDATE_FUNCTION, validate_command(command_id, execution_id), job_id=command_id, **_options(s)
    )
    return command_id


def resend_nip(connection: redis.Redis, execution_id: str, *, settings: Settings | None = None) -> str:
    s = settings or get_settings()
    command_id = new_command_id("resend")
    Queue(s.bridge_queue, connection=connection).enqueue(
        RESEND_FUNCTION, resend_command(command_id, execution_id), job_id=command_id, **_options(s)
    )
    return command_id


def command_result(connection: redis.Redis, command_id: str) -> dict[str, Any] | None:
    """``{"status": …, "result": …}`` of a command job, or None when unknown/expired."""
    try:
        job = Job.fetch(command_id, connection=connection)
    except NoSuchJobError:
        return None
    return {"status": str(job.get_status()), "result": job.return_value()}
