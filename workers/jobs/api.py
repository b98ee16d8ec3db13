"""Python API for internal services: enqueue bridge commands; each returns the command (= RQ job) id.

The form and the NIP are sealed with ``BRIDGE_DATA_KEYS`` before they reach Redis. Results and progress
arrive as events (``application.started``, ``nip.validated``, ``nip.resent``, ``action.failed``…);
``command_result`` reads the job's return value when needed. The receiver's HTTP
command endpoints build the same payloads with the ``workers.core.contract`` builders.

``idempotency_key`` (``start_application``, ``validate_nip``): the same key gives the same command id and
enqueues it once, for ``BRIDGE_DEDUPE_TTL_SECONDS`` — however long the job hash lives. The key is kept
under ``keys.dedupe(command_id)``, written in one transaction with the job (and the stashed NIP), the key
the receiver's HTTP commands use: an HTTP ``Idempotency-Key`` and the API's key name the same command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from workers.core import keys, tracing
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
        "meta": tracing.job_meta(),  # the caller's trace, when it traces
    }


def _enqueue(
    connection: redis.Redis,
    s: Settings,
    func: str,
    command: Mapping[str, Any],
    command_id: str,
    *,
    once: bool,
    before: Callable[[redis.Redis], None] | None = None,
) -> None:
    """Enqueue ``command`` as job ``command_id`` (after ``before``'s writes). ``once``: only when its
    dedupe key is absent, and the key written with the job in one ``MULTI`` (a concurrent call with the
    same key loses the ``WATCH`` and does nothing)."""
    queue = Queue(s.bridge_queue, connection=connection, serializer=JOB_SERIALIZER)
    if not once:
        if before is not None:
            before(connection)
        queue.enqueue(func, command, job_id=command_id, **_options(s))
        return
    dedupe = keys.dedupe(command_id)
    with connection.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(dedupe)  # type: ignore[no-untyped-call]
            if pipe.exists(dedupe):
                return
            pipe.multi()
            if before is not None:
                before(pipe)
            queue.enqueue(func, command, job_id=command_id, pipeline=pipe, **_options(s))
            pipe.set(dedupe, datetime.now(UTC).isoformat(), ex=s.bridge_dedupe_ttl_seconds)
            pipe.execute()
        except redis.WatchError:
            return


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
    _enqueue(connection, s, START_FUNCTION, command, command_id, once=bool(idempotency_key))
    return command_id


def validate_nip(
    connection: redis.Redis,
    execution_id: str,
    nip: str,
    *,
    settings: Settings | None = None,
    idempotency_key: str | None = None,
) -> str:
    """The NIP is kept sealed under a short-TTL key; the job payload only carries a reference to it.
    With ``idempotency_key`` (scoped to ``execution_id``) a retry neither enqueues a second validation
    (Kiban would refuse it once the first passed: ``action.failed``) nor stores the NIP again."""
    s = settings or get_settings()
    command_id = new_command_id("nip", idempotency_key, scope=execution_id)
    ring = data_keys(s)
    _enqueue(
        connection, s, VALIDATE_FUNCTION, validate_command(command_id, execution_id), command_id,
        once=bool(idempotency_key), before=lambda c: state.stash_nip(c, command_id, nip, ring),
    )  # fmt: skip
    return command_id


def resend_nip(connection: redis.Redis, execution_id: str, *, settings: Settings | None = None) -> str:
    s = settings or get_settings()
    command_id = new_command_id("resend")
    _enqueue(connection, s, RESEND_FUNCTION, resend_command(command_id, execution_id), command_id, once=False)
    return command_id


def command_result(connection: redis.Redis, command_id: str) -> dict[str, Any] | None:
    """``{"status": …, "result": …}`` of a command job, or None when unknown/expired."""
    try:
        job = Job.fetch(command_id, connection=connection, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        return None
    status = job.get_status()
    return {"status": status.value if status is not None else None, "result": job.return_value()}
