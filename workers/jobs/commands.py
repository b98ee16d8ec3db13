"""Command jobs for internal services: start an application, validate a NIP, resend a NIP.

``start_application`` checkpoints each step in the RQ job's ``meta`` (execution id, form submitted,
NIP sent), so a retried or crash-requeued job resumes where it stopped instead of executing a second
workfloo. The execution id is recorded with compare-and-set under the run's lease (``workers.jobs.lease``)
right after ``execute``: a run that lost its job to the reaper (a paused worker) stops there. It is made
durable (``workers.jobs.durability``) before the form is submitted, so a Redis failover that loses it
leaves at most an execution with no form. The one window left is a crash, a lost lease or such a loss
between Kiban answering ``execute`` and that record: Kiban has no
idempotency key, so that orphan execution is possible; it never gets a form and Kiban abandons it
(documented in docs/workers.md).

The form arrives sealed (``workers.core.crypto``) and is opened only right before ``submit_form``; once
Kiban accepted it, the sealed form is dropped from the job's stored payload. The NIP of ``validate_nip``
never sits in a job payload: the API stores it sealed under a short-TTL key, the job gets a reference,
opens it right before validating and deletes it once Kiban answered.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import redis
from rq import get_current_job

from workers.core import crypto, keys
from workers.core.contract import CRASH_REQUEUES, ResendNipCommand, StartCommand, ValidateNipCommand
from workers.core.errors import (
    KibanConflictError,
    KibanNipAlreadySentError,
    KibanValidationError,
    PermanentError,
)
from workers.core.events import Event, EventType, Source
from workers.core.log import get_logger
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import connection, data_keys, durability, lease, settings, state
from workers.jobs.retry import guarded, publish_action_failed, reason_of
from workers.runtime import rq_internals
from workers.vendors.kiban.client import get_kiban_client
from workers.vendors.kiban.models import NipPhase, WorkflooStatus

log = get_logger(__name__)


def status_callback_url(s: Settings) -> str:
    return f"{s.bridge_public_url}/v1/kiban/status"


def nip_callback_url(s: Settings, execution_id: str) -> str:
    return f"{s.bridge_public_url}/v1/kiban/executions/{execution_id}/nip-events"


def callback_key(s: Settings) -> str | None:
    """The key Kiban presents back to us: the first configured callback key (list old+new to rotate)."""
    return s.bridge_callback_keys[0].get_secret_value() if s.bridge_callback_keys else None


def _checkpoint(name: str, value: Any) -> None:
    job = get_current_job()
    if job is not None:
        job.meta[name] = value
        job.save_meta()  # type: ignore[no-untyped-call]


def _checkpoints() -> dict[str, Any]:
    job = get_current_job()
    return dict(job.meta) if job is not None else {}


# --- start an application -----------------------------------------------------------------------


def start_application(command: StartCommand) -> Any:
    conn, s = connection(), settings()
    return guarded(conn, s, "start_application", None, lambda: _start(conn, s, command))


def _start(conn: redis.Redis, s: Settings, command: StartCommand) -> dict[str, Any]:
    if not s.kiban_workfloo_definition_id:
        raise PermanentError("BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID is not set")
    kiban = get_kiban_client(s)
    publisher = Publisher(conn, s)
    done = _checkpoints()
    command_id = command["command_id"]
    scenario = command["scenario_id"] or None

    # Opened before any effect, so a form that fails to open (moved, tampered, unknown kid) costs nothing.
    form = _open_form(s, command) if not done.get("form_submitted") else {}
    execution_id = done.get("execution_id") or lease.recorded(conn, "execution_id")
    if not execution_id:
        lease.check(conn, "kiban.execute")
        created = kiban.execute(
            s.kiban_workfloo_definition_id,
            scenario_id=scenario,
            callback_url=status_callback_url(s),
            callback_api_key=callback_key(s),
        )
        # Compare-and-set: a run that lost the job meanwhile stops here, leaving `created` an orphan
        # execution with no form (Kiban abandons it); the id that stands is the one this job goes on with.
        execution_id = lease.record_once(conn, "execution_id", created)
    _checkpoint("execution_id", execution_id)
    state.set_fields(
        conn,
        execution_id,
        {state.COMMAND_ID: command_id or "", state.CREATED_AT: datetime.now(UTC).isoformat()},
    )
    state.touch_open(conn, execution_id, refresh=False)
    publisher.publish(
        Event(
            type=EventType.APPLICATION_STARTED,
            execution_id=execution_id,
            data={"command_id": command_id, "scenario_id": scenario},
        ),
        once_key=f"started:{execution_id}",
    )
    if not done.get("form_submitted"):
        # The execution id checkpoint is this job's anchor: a Redis that loses it re-executes a second
        # workfloo, so the form and the NIP go only to an execution whose id survives a failover.
        durability.ensure(conn, s, before="submit_form")
        if form:
            try:
                lease.check(conn, "kiban.submit_form")
                kiban.submit_form(execution_id, form)
            except KibanConflictError:
                # The execution is this job's own (checkpointed above), so a 409 away from the FORM
                # step means an earlier run submitted the form and was killed before its checkpoint.
                if kiban.get_status(execution_id).current_node_type == "FORM":
                    raise
        _checkpoint("form_submitted", True)
        _drop_form(command)
    if not done.get("nip_sent"):
        lease.check(conn, "kiban.send_nip")
        with contextlib.suppress(KibanNipAlreadySentError):  # sent by an earlier run of this job
            kiban.send_nip(
                execution_id,
                url_callback=nip_callback_url(s, execution_id),
                api_key_callback=callback_key(s),
            )
        _checkpoint("nip_sent", True)
    log.info("application_started", execution_id=execution_id, command_id=command_id)
    return {"execution_id": execution_id}


def _open_form(s: Settings, command: StartCommand) -> dict[str, Any]:
    sealed = command.get("sealed_form")
    if sealed is not None:
        form: dict[str, Any] = data_keys(s).open_json(sealed, crypto.FORM, command["command_id"])
        return form
    return dict(command.get("form") or {})  # a job enqueued by an earlier release


def _drop_form(command: StartCommand) -> None:
    """Kiban holds the form now: keep no copy of it in the job's stored payload (retries and crash
    re-runs resume past the form step from the checkpoint)."""
    job = get_current_job()
    if job is None:
        return
    kept = {name: value for name, value in command.items() if name not in ("sealed_form", "form")}
    rq_internals.replace_job_args(job, (kept,))


# --- validate a NIP -----------------------------------------------------------------------------


def validate_nip(command: ValidateNipCommand) -> Any:
    conn, s = connection(), settings()
    execution_id = command["execution_id"]
    return guarded(conn, s, "validate_nip", execution_id, lambda: _validate(conn, s, command, execution_id))


def _validate(
    conn: redis.Redis, s: Settings, command: ValidateNipCommand, execution_id: str
) -> dict[str, Any]:
    ref = command["nip_ref"]
    nip = state.take_nip(conn, ref, data_keys(s))
    kiban = get_kiban_client(s)
    if nip is None:
        if _crash_rerun() and _past_the_nip_step(kiban.get_status(execution_id)):
            # The first run dropped the stash once Kiban accepted the NIP, then died before its event.
            return _validated(conn, s, command, execution_id, ref, NipPhase.VALIDATED)
        raise PermanentError("the NIP reference expired before the job ran; ask the applicant again")
    try:
        lease.check(conn, "kiban.validate_nip")
        phase = kiban.validate_nip_twice(execution_id, nip)
    except KibanValidationError as exc:
        if _crash_rerun() and _past_the_nip_step(kiban.get_status(execution_id)):
            # This job's worker died mid-run (the reaper requeued it) after Kiban accepted the NIP:
            # Kiban has moved on, so the 400 says "no NIP step now", not "wrong NIP". Finish the
            # first run's work. A first run that gets this 400 is a late or wrong NIP, reported below.
            return _validated(conn, s, command, execution_id, ref, NipPhase.VALIDATED)
        # A wrong NIP is the applicant's answer, not a dead letter: report it and finish the job.
        state.drop_nip(conn, ref)
        publish_action_failed(
            conn, s, action="validate_nip", execution_id=execution_id, reason=reason_of(exc),
            retryable=False, attempts=1,
        )  # fmt: skip
        return {"execution_id": execution_id, "valid": False}
    return _validated(conn, s, command, execution_id, ref, phase)


def _crash_rerun() -> bool:
    job = get_current_job()
    return job is not None and int(job.meta.get(CRASH_REQUEUES, 0)) > 0


def _past_the_nip_step(status: WorkflooStatus) -> bool:
    """Kiban no longer waits for a NIP: it validated one, runs the next step, or the execution ended."""
    return status.is_terminal or status.phase == NipPhase.VALIDATED or status.is_processing


def _validated(
    conn: redis.Redis, s: Settings, command: ValidateNipCommand, execution_id: str, ref: str, phase: str
) -> dict[str, Any]:
    state.drop_nip(conn, ref)
    Publisher(conn, s).publish(
        Event(
            type=EventType.NIP_VALIDATED,
            execution_id=execution_id,
            data={"phase": phase, "command_id": command["command_id"]},
        ),
        once_key=f"nip-validated:{execution_id}:{command['command_id']}",
        state_key=keys.execution(execution_id),
        state_fields={state.NIP_PHASE: phase} if phase else None,
    )
    return {"execution_id": execution_id, "valid": True, "phase": phase}


# --- resend a NIP -------------------------------------------------------------------------------


def resend_nip(command: ResendNipCommand) -> Any:
    conn, s = connection(), settings()
    execution_id = command["execution_id"]
    return guarded(conn, s, "resend_nip", execution_id, lambda: _resend(conn, s, command, execution_id))


def _resend(conn: redis.Redis, s: Settings, command: ResendNipCommand, execution_id: str) -> dict[str, Any]:
    number = command["resend"]
    marker = f"nip_resent:{number}" if number else None
    known = state.load(conn, execution_id)
    if marker and known.get(marker) == "1":
        return {"execution_id": execution_id, "resent": False, "why": "already_resent"}
    if known.get(state.TERMINAL) == "1" or known.get("nip_delivered") == "1":
        return {"execution_id": execution_id, "resent": False, "why": "no_longer_needed"}
    lease.check(conn, "kiban.resend_nip")
    get_kiban_client(s).resend_nip(
        execution_id, url_callback=nip_callback_url(s, execution_id), api_key_callback=callback_key(s)
    )
    once = f"nip-resent:{execution_id}:{number or command['command_id']}"
    Publisher(conn, s).publish(
        Event(
            type=EventType.NIP_RESENT,
            execution_id=execution_id,
            source=Source.BRIDGE,
            data={"resend": number, "command_id": command["command_id"]},
        ),
        once_key=once,
        state_key=keys.execution(execution_id),
        state_fields={marker: "1"} if marker else None,
    )
    state.touch_open(conn, execution_id)
    return {"execution_id": execution_id, "resent": True, "resend": number}
