"""Kiban callback bodies, the deterministic delivery ids, and the receiver → workers job contract.

The receiver validates every callback body with the schemas below and enqueues one ordinary RQ job per
accepted delivery: job id = ``event_id``, function = ``JOB_FUNCTIONS[kind]`` (a dotted path, so the
receiver never imports job code), one positional argument = a ``CallbackPayload``. Commands of internal
services are built by ``start_command``/``validate_command``/``resend_command`` (the HTTP endpoints and
the Python API share them); the start form leaves the builder sealed (``workers.core.crypto``, purpose
``form``, id = the command id) and is opened only by the job step that submits it. Payloads are
``TypedDict``s: plain JSON-able dicts at run time (nothing is validated twice on the hot path), checked
by mypy on both sides.

Vendor gaps (``docs/vendor-assumptions.md`` K1-K3): bodies are parsed loosely (unknown fields are ignored
by the schemas). ``CallbackPayload["body"]`` keeps only the fields the jobs read (``stored_body``): a status
object's form, contact data and anything else Kiban adds never reach Redis.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, Literal, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field
from rq.job import Retry
from rq.serializers import JSONSerializer
from ulid import ULID

from workers.core.crypto import FORM, KeyRing
from workers.core.settings import Settings

CallbackKind = Literal["nip", "status", "finished"]

JOB_SERIALIZER: Final = JSONSerializer
"""The serializer of every RQ job the bridge writes or runs (job data, meta, results): JSON, never RQ's
default pickle, so whoever can write to Redis cannot make a worker run code. Pass it as ``serializer=``
to every ``Queue``, ``Job.fetch``/``fetch_many``/``create``, registry and worker
(``tests/test_job_serializer.py`` checks every call site)."""

JOB_FUNCTIONS: Final[dict[str, str]] = {
    "nip": "workers.jobs.callbacks.handle_nip_event",
    "status": "workers.jobs.callbacks.handle_status",
    "finished": "workers.jobs.callbacks.handle_finished",
}
"""Dotted path of the RQ job function for each callback kind."""

ID_PATTERN: Final = r"[A-Za-z0-9_-]{1,64}"
"""Accepted execution and link ids (use with ``fullmatch``, or anchored: ``f"^{ID_PATTERN}$"``). Kiban's
docs show 24-hex and UUID ids, both fit; liberal, yet safe to embed in keys, RQ job ids and URLs."""

EXECUTION_ID_RE: Final = re.compile(ID_PATTERN)
"""``ID_PATTERN`` compiled; ``EXECUTION_ID_RE.fullmatch(value)`` is the one id check."""

FINISHED_BODY_ID_FIELDS: Final = ("id", "workflooId", "idWorkfloo", "executionId")
"""JSON body keys that may carry the execution id on ``POST /v1/kiban/finished``, in lookup order."""

NipEventName = Literal["PENDING", "SENT", "SUCCESS", "ERROR"]


class NipEventBody(BaseModel):
    """NIP delivery-status callback (Kiban NIP send guide; assumption K2)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event: NipEventName
    date: str = Field(min_length=1, max_length=64)
    linkId: str | None = Field(default=None, pattern=f"^{ID_PATTERN}$")
    errorMessage: str | None = Field(default=None, max_length=4096)


class StatusWebhookBody(BaseModel):
    """Execution status webhook: Kiban's ``WorkflooStatus`` object (assumption K1). Only the fields the
    receiver needs are checked; of the rest only what the job reads is stored (``stored_body``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=f"^{ID_PATTERN}$")
    status: str = Field(min_length=1, max_length=64)
    name: str | None = None
    currentNodeId: str | None = None
    currentNodeName: str | None = None
    currentNodeType: str | None = None


class Traced(TypedDict, total=False):
    """The optional key of every job argument the receiver writes: the W3C trace context of its span,
    present only while tracing is on (``workers.core.tracing``)."""

    traceparent: str


class CallbackPayload(Traced):
    """The single positional argument of every callback job."""

    event_id: str
    """Deterministic delivery id (``nip_event_id`` …), also the RQ job id."""
    kind: CallbackKind
    execution_id: str | None
    """None for a NIP callback whose link id was not known yet (the job resolves it)."""
    link_id: str | None
    received_at: str
    """ISO-8601 UTC stamp of the receiver's accept."""
    event_type_header: str | None
    """``X-Kiban-Event-Type`` of a status webhook, truncated."""
    body: dict[str, Any]
    """The fields of the callback's JSON object the jobs read (``stored_body``), as received."""


_NIP_BODY_FIELDS: Final = ("event", "date", "linkId", "errorMessage")
_STATUS_BODY_FIELDS: Final = ("id", "status", "currentNodeType", "currentNodeName")
_LINK_FIELDS: Final = ("phase",)
_LINK_EVENT_FIELDS: Final = ("status", "date", "errorMessage")
_FINISHED_BODY_FIELDS: Final = ("id",)


def _pick(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: body[name] for name in fields if name in body}


def stored_body(kind: CallbackKind, body: dict[str, Any]) -> dict[str, Any]:
    """What the job of ``kind`` reads of a callback body (``workers.jobs.callbacks``), nothing else.

    A whitelist: NIP events keep event, date, linkId and errorMessage; status objects keep id, status,
    the current node's type and name, ``link.phase`` and each ``link.events`` item's status, date and
    errorMessage (no form, no ``link.phoneNumber``/``link.email``, no unknown field); end-of-workfloo
    bodies keep ``id``. Delivery ids are computed from the body as received, before this."""
    if kind == "nip":
        return _pick(body, _NIP_BODY_FIELDS)
    if kind == "finished":
        return _pick(body, _FINISHED_BODY_FIELDS)
    kept = _pick(body, _STATUS_BODY_FIELDS)
    link = body.get("link")
    if isinstance(link, dict):
        minimal = _pick(link, _LINK_FIELDS)
        events = link.get("events")
        if isinstance(events, list):
            minimal["events"] = [_pick(e, _LINK_EVENT_FIELDS) for e in events if isinstance(e, dict)]
        kept["link"] = minimal
    return kept


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def nip_event_id(execution_or_link_id: str, event: str, date: str) -> str:
    """Same delivery → same id: ``nip-<sha256(execution_or_link|event|date)[:32]>``."""
    return "nip-" + _digest(execution_or_link_id, event, date)


_HEADER_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")


def status_event_id(kiban_event_id: str | None, body: Any) -> str:
    """``status-<x-kiban-event-id>`` when the header is a safe id, ``status-h<sha256(header)>`` when it is
    not, else ``status-b<sha256(canonical body JSON)>`` (identical status objects dedupe)."""
    if kiban_event_id:
        if _HEADER_ID_RE.fullmatch(kiban_event_id):
            return "status-" + kiban_event_id
        return "status-h" + _digest(kiban_event_id)
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "status-b" + hashlib.sha256(canonical).hexdigest()[:32]


def finished_event_id(execution_id: str) -> str:
    """One end-of-workfloo callback per execution."""
    return "finished-" + execution_id


# --- commands of internal services (HTTP endpoints and the Python API build the same payloads) ---

START_FUNCTION = "workers.jobs.commands.start_application"
VALIDATE_FUNCTION = "workers.jobs.commands.validate_nip"
RESEND_FUNCTION = "workers.jobs.commands.resend_nip"
FORGET_FUNCTION = "workers.jobs.erasure.forget_job"


COMMAND_ID_RE: Final = re.compile(r"cmd-[a-z]{1,16}-[0-9a-z]{26}")
"""What ``new_command_id`` gives: ``GET /v1/commands/{id}`` reads no job whose id does not match."""


def new_command_id(kind: str, idempotency_key: str | None = None, *, scope: str | None = None) -> str:
    """``cmd-<kind>-<ulid>``, or a digest of the caller's idempotency key (same key → same command).

    ``scope`` narrows the key to one object (the NIP command: the execution id), so a key a client reuses
    for another application names another command. The HTTP endpoints and the Python API both call this:
    one key space, remembered under ``keys.dedupe(command_id)`` for ``BRIDGE_DEDUPE_TTL_SECONDS``."""
    if idempotency_key:
        named = f"{kind}\n{idempotency_key}" if scope is None else f"{kind}\n{scope}\n{idempotency_key}"
        digest = hashlib.sha256(named.encode()).hexdigest()[:26]
        return f"cmd-{kind}-{digest}"
    return f"cmd-{kind}-{str(ULID()).lower()}"


class _StartForm(Traced, total=False):
    sealed_form: str
    form: dict[str, Any]


class StartCommand(_StartForm):
    """Argument of ``START_FUNCTION``: execute a workfloo, submit the form, send the NIP.

    ``sealed_form`` is the form as a ``workers.core.crypto`` envelope bound to ``form|<command_id>``; the
    job drops it from its stored payload once Kiban accepted the form. ``form`` (plaintext) is only read
    from jobs enqueued by earlier releases."""

    command_id: str
    scenario_id: str | None


class ValidateNipCommand(Traced):
    """Argument of ``VALIDATE_FUNCTION``. The NIP itself waits under a short-TTL key named by
    ``nip_ref``: it never sits in a job payload."""

    command_id: str
    execution_id: str
    nip_ref: str


class ResendNipCommand(Traced):
    """Argument of ``RESEND_FUNCTION``: from a caller (``command_id``, no ``resend``) or scheduled by
    the NIP ERROR handling (``resend`` = the resend number, no ``command_id``)."""

    command_id: str | None
    execution_id: str
    resend: int | None


class ForgetCommand(Traced):
    """Argument of ``FORGET_FUNCTION``: erase everything the bridge holds about one application."""

    command_id: str
    execution_id: str
    force: bool


def start_command(
    command_id: str, form: dict[str, Any], scenario_id: str | None, keys: KeyRing
) -> StartCommand:
    return {
        "command_id": command_id,
        "sealed_form": keys.seal_json(dict(form), FORM, command_id),
        "scenario_id": scenario_id,
    }


def validate_command(command_id: str, execution_id: str) -> ValidateNipCommand:
    return {"command_id": command_id, "execution_id": execution_id, "nip_ref": command_id}


def resend_command(command_id: str, execution_id: str) -> ResendNipCommand:
    return {"command_id": command_id, "execution_id": execution_id, "resend": None}


def forget_command(command_id: str, execution_id: str, force: bool) -> ForgetCommand:
    return {"command_id": command_id, "execution_id": execution_id, "force": force}


CRASH_REQUEUES = "crash_requeues"
"""Job meta field: how often the reaper requeued this job after its worker died (a job reads it to know
that an earlier run may have had effects)."""

RETRY_STARTED_AT = "retry_started_at"
"""Job meta field: epoch seconds of the job's first failed attempt, the start of its retry budget (kept
by requeues and replays, so none of them restarts the budget)."""

DEAD_LETTER_CODE = "dead_letter_code"
"""Job meta field: why the job was last dead-lettered, one of ``DEAD_LETTER_CODES``."""

DEAD_LETTERS = "dead_letters"
"""Job meta field: how many times the job landed in the failed registry (``job.dead_lettered``'s once-key)."""

RETRY_BUDGET_SPENT = "retry_budget_spent"
PERMANENT = "permanent"
EXCEPTION = "exception"
TIMEOUT = "timeout"
ABANDONED = "abandoned"
DEAD_LETTER_CODES = (RETRY_BUDGET_SPENT, PERMANENT, EXCEPTION, TIMEOUT, ABANDONED)
"""``retry_budget_spent``: a retryable error outlived the retry budget; ``permanent``: a non-retryable
error; ``exception``: an exception outside the retry policy (a bug); ``timeout``: the job timeout;
``abandoned``: the job kept killing workers (the reaper)."""


def abandoned_job_retry(settings: Settings) -> Retry | None:
    """RQ retry fields of every bridge-queue job (receiver-written, API and worker-enqueued alike).

    Only for a job whose worker died: RQ's own ``StartedJobRegistry.cleanup`` (run by any count of the
    registry — ``status``, ``rq info``, a dashboard — and by RQ's maintenance) then re-queues it, at once,
    instead of failing it with ``AbandonedJobError``; as many times as the reaper would
    (``BRIDGE_REAPER_MAX_REQUEUES``; none when that is 0). A job that raises is dead-lettered at once all the
    same: ``workers.jobs.retry.guarded`` clears the retries left before it gives up, and a ``dlq replay``
    gives them back. The bridge's own retries are the ``rq.Retry`` a job returns, counted apart
    (``number_of_retries``)."""
    if settings.reaper_max_requeues < 1:
        return None
    return Retry(max=settings.reaper_max_requeues)
