"""The event envelope shared by the receiver, the workers and every subscriber.

Every event has the same envelope; only ``data`` varies by ``type``. ``id`` identifies the fact: an event
published with a once-key (every effect the bridge reports) takes ``fact_event_id(once_key)``, so the
same fact has the same id however often and however late it is published again; any other event keeps
a fresh ULID. The catalogue of types lives in ``docs/events.md``; the data
of each type is modelled below (``DATA_MODELS``), and the JSON Schemas in ``docs/schemas/events/`` and the
consumer package's typed events are generated from these models (``workers.ops.event_schemas``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

SCHEMA_VERSION = 1


class Source(StrEnum):
    KIBAN = "kiban"
    KOMPLIANT = "kompliant"
    BRIDGE = "bridge"


class EventType(StrEnum):
    CALLBACK_RECEIVED = "callback.received"
    NIP_PENDING = "nip.pending"
    NIP_SENT = "nip.sent"
    NIP_DELIVERED = "nip.delivered"
    NIP_FAILED = "nip.failed"
    NIP_RESENT = "nip.resent"
    NIP_VALIDATED = "nip.validated"
    APPLICATION_STARTED = "application.started"
    APPLICATION_FORGOTTEN = "application.forgotten"
    WORKFLOO_STATUS_CHANGED = "workfloo.status_changed"
    WORKFLOO_COMPLETED = "workfloo.completed"
    WORKFLOO_FAILED = "workfloo.failed"
    WORKFLOO_ABANDONED = "workfloo.abandoned"
    KOMPLIANT_WORKFLOW_CREATED = "kompliant.workflow.created"
    KOMPLIANT_WORKFLOW_STARTED = "kompliant.workflow.started"
    KOMPLIANT_WORKFLOW_REJECTED = "kompliant.workflow.rejected"
    KOMPLIANT_WORKFLOW_CONFLICT = "kompliant.workflow.conflict"
    ACTION_FAILED = "action.failed"
    JOB_DEAD_LETTERED = "job.dead_lettered"  # a job landed in RQ's failed registry (no applicant data)
    OPERATOR_ACTION = "operator.action"  # an operator acted in the console (audit; no applicant data)


def matches(patterns: list[str] | tuple[str, ...] | None, event_type: str) -> bool:
    """True when ``event_type`` matches one of the shell-style patterns (``nip.*``); no patterns = all."""
    if not patterns:
        return True
    return any(fnmatchcase(event_type, pattern) for pattern in patterns)


def new_event_id() -> str:
    return str(ULID())


def fact_event_id(once_key: str) -> str:
    """The id of the fact named by ``once_key``: 128 bits of its SHA-256 in a ULID's 26-character
    Crockford base32, so ids keep one shape. Stable across processes and releases; not time-ordered."""
    digest = hashlib.sha256(b"workfloo-event\n" + once_key.encode()).digest()
    return str(ULID.from_bytes(digest[:16]))


def utc_now() -> datetime:
    return datetime.now(UTC)


ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
"""Crockford base32, 26 characters: what ``new_event_id`` makes."""


# --- the data of each event type -----------------------------------------------------------------
# Consumers must ignore fields they do not know (fields are only ever added within a schema version),
# so every model allows extra fields. A field with a default may be absent; one without is always there.


class EventData(BaseModel):
    """Base of the per-type ``data`` models."""

    model_config = ConfigDict(extra="allow", frozen=True)


class CallbackReceivedData(EventData):
    """``callback.received``: Kiban delivered a callback and a worker started on it."""

    kind: Literal["nip", "status", "finished"] = Field(description="which receiver endpoint took it")
    event_id: str = Field(description="the receiver's deterministic delivery id")
    received_at: str = Field(description="when the receiver accepted it (RFC 3339)")
    event_type: str | None = Field(description="Kiban's x-kiban-event-type header (status webhooks)")
    detail: str | None = Field(description="the NIP event name, the workfloo status, or finished")
    link_id: str | None = Field(default=None, description="NIP link id, when the callback carried one")


class NipDeliveryData(EventData):
    """``nip.pending``, ``nip.sent``, ``nip.delivered``: Kiban's NIP delivery callback."""

    date: str = Field(description="Kiban's timestamp of the delivery event")
    link_id: str | None = Field(description="NIP link id")


class NipFailedData(NipDeliveryData):
    """``nip.failed``: Kiban reported ERROR for the NIP delivery; carries the resend decision."""

    error_message: str | None = Field(description="Kiban's message, redacted, at most 300 characters")
    recoverable: bool = Field(description="true when the bridge will resend")
    resend: int | None = Field(description="number of the resend it scheduled")
    why: Literal[
        "will_resend",
        "invalid_destination",
        "resends_exhausted",
        "resends_disabled",
        "already_delivered",
        "execution_finished",
    ] = Field(description="why the bridge does or does not resend")


class NipResentData(EventData):
    """``nip.resent``: the bridge called Kiban's nip/resend."""

    resend: int | None = Field(description="1 for the first resend, …")
    command_id: str | None = Field(description="internal command that asked for it, if any")


class NipValidatedData(EventData):
    """``nip.validated``: the applicant's NIP was submitted and Kiban answered with a phase."""

    phase: str = Field(description="Kiban's link.phase after validation (VALIDATED, VALIDATE_2, …)")
    command_id: str | None = Field(description="internal command id")


class ApplicationStartedData(EventData):
    """``application.started``: the bridge executed a workfloo for a new application."""

    command_id: str | None = Field(description="internal command id")
    scenario_id: str | None = Field(description="sandbox scenario used, if any")


class ErasureCounts(EventData):
    """What one erasure deleted."""

    jobs: int
    keys: int
    stream_entries: int
    dead_letter_entries: int


class ApplicationForgottenData(EventData):
    """``application.forgotten``: everything the bridge held about one application was erased."""

    execution_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the execution id")
    command_id: str | None = Field(description="the erasure command when it came through the endpoint")
    forced: bool = Field(description="erased although work was in flight")
    deleted: ErasureCounts = Field(description="counts of what was deleted")


class StatusChangedData(EventData):
    """``workfloo.status_changed``: a status webhook from Kiban."""

    status: str | None = Field(description="PROGRESS, SUCCESS, ERROR, ABANDONED")
    node_type: str | None = Field(description="currentNodeType (FORM, LINK, DOCUMENT, …)")
    node_name: str | None = Field(description="currentNodeName")
    nip_phase: str | None = Field(description="link.phase when the paused node is a NIP link")
    event_type: str | None = Field(description="Kiban's x-kiban-event-type header")


class WorkflooFinishedData(EventData):
    """``workfloo.completed``, ``workfloo.failed``, ``workfloo.abandoned``: a terminal status."""

    status: str = Field(description="Kiban's terminal status")
    decision: str = Field(description="the bridge's reading of the outcome (approved, rejected, …)")
    decision_source: str | None = Field(description="where the decision was read from")
    decision_detail: str | None = Field(description="short explanation")
    cancelled: bool = Field(description="abandoned by hand in the console rather than expired")
    has_name: bool = Field(description="a first or last name was found (never the name itself)")
    has_email: bool = Field(description="an e-mail was found (needed for the Kompliant hand-off)")
    trigger: Literal["status", "callback", "reconciler"] = Field(description="which path saw it first")


class KompliantWorkflowStartedData(EventData):
    """``kompliant.workflow.started``: the business application workflow was started."""

    workflow_id: str = Field(description="Kompliant workflow id")
    subject_record_id: str = Field(description="Kompliant subject record id")


class KompliantWorkflowCreatedData(KompliantWorkflowStartedData):
    """``kompliant.workflow.created``: the business application workflow was created (or adopted)."""

    adopted: bool = Field(description="an existing workflow from an interrupted attempt was reused")


class KompliantWorkflowRejectedData(EventData):
    """``kompliant.workflow.rejected``: Kompliant refused the hand-off with a non-retryable error."""

    code: str | None = Field(description="Kompliant's error code")
    sub_code: str | None = Field(description="Kompliant's error sub-code")
    entity_type: str | None = Field(description="entity the error is about")
    trace_id: str | None = Field(description="Kompliant trace_id, for their support")


class KompliantWorkflowConflictData(KompliantWorkflowRejectedData):
    """``kompliant.workflow.conflict``: Kompliant refused the hand-off because of an application the bridge
    cannot attribute and which may be its own (``DUPLICATE_EMAIL``); a person decides."""


class JobDeadLetteredData(EventData):
    """``job.dead_lettered``: a job landed in RQ's failed registry (nothing of its arguments)."""

    function: str | None = Field(description="the job's function path (null when its data cannot be read)")
    job_id: str = Field(description="RQ job id (dlq replay <job_id>)")
    queue: str = Field(description="the RQ queue")
    code: str = Field(
        description="retry_budget_spent, permanent, exception, timeout or abandoned (docs/events.md)"
    )
    reason: str = Field(description="codes only, as in action.failed")
    dead_letters: int = Field(description="how many times this job id has been dead-lettered")


class ActionFailedData(EventData):
    """``action.failed``: a job gave up (non-retryable error, or retries exhausted)."""

    action: str = Field(description="what was being done (job or step name)")
    job_id: str | None = Field(description="RQ job id")
    reason: str = Field(description="codes only, never a vendor's free text")
    retryable: bool = Field(description="whether the error was retryable (true = retries exhausted)")
    attempts: int | None = Field(default=None, description="attempts made (when known)")


class OperatorActionData(EventData):
    """``operator.action``: an operator acted in the console (who, what, on what; no applicant data)."""

    actor: str = Field(description="key:<id> of the internal key signed in with, or sso:<identity>")
    action: str = Field(
        description="dead_letter.replay(_all), nip.resend, dead_event.replay, subscriber.disable/enable"
    )
    target: str = Field(description="the job id, execution id, dead entry id, queue or subscriber key")
    outcome: str = Field(description="done, or a code: not_found, unchanged, queued, none")


DATA_MODELS: dict[EventType, type[EventData]] = {
    EventType.CALLBACK_RECEIVED: CallbackReceivedData,
    EventType.NIP_PENDING: NipDeliveryData,
    EventType.NIP_SENT: NipDeliveryData,
    EventType.NIP_DELIVERED: NipDeliveryData,
    EventType.NIP_FAILED: NipFailedData,
    EventType.NIP_RESENT: NipResentData,
    EventType.NIP_VALIDATED: NipValidatedData,
    EventType.APPLICATION_STARTED: ApplicationStartedData,
    EventType.APPLICATION_FORGOTTEN: ApplicationForgottenData,
    EventType.WORKFLOO_STATUS_CHANGED: StatusChangedData,
    EventType.WORKFLOO_COMPLETED: WorkflooFinishedData,
    EventType.WORKFLOO_FAILED: WorkflooFinishedData,
    EventType.WORKFLOO_ABANDONED: WorkflooFinishedData,
    EventType.KOMPLIANT_WORKFLOW_CREATED: KompliantWorkflowCreatedData,
    EventType.KOMPLIANT_WORKFLOW_STARTED: KompliantWorkflowStartedData,
    EventType.KOMPLIANT_WORKFLOW_REJECTED: KompliantWorkflowRejectedData,
    EventType.KOMPLIANT_WORKFLOW_CONFLICT: KompliantWorkflowConflictData,
    EventType.JOB_DEAD_LETTERED: JobDeadLetteredData,
    EventType.ACTION_FAILED: ActionFailedData,
    EventType.OPERATOR_ACTION: OperatorActionData,
}
"""The ``data`` model of every event type (a test checks that every ``EventType`` has one)."""


class Event(BaseModel):
    """One thing that happened to one application (or to the bridge)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(default_factory=new_event_id)
    type: str
    occurred_at: datetime = Field(default_factory=utc_now)
    execution_id: str | None = None
    source: Source = Source.BRIDGE
    schema_version: int = SCHEMA_VERSION
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "occurred_at": self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "execution_id": self.execution_id,
                "source": self.source.value,
                "schema_version": self.schema_version,
                "data": self.data,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        return cls.model_validate(orjson.loads(raw))

    def typed_data(self) -> EventData:
        """``data`` as the model of this event's type (pydantic's ``ValidationError`` when it does not fit;
        ``KeyError`` for a type the catalogue does not know)."""
        return DATA_MODELS[EventType(self.type)].model_validate(self.data)
