"""Typed views of the Kiban workfloo shapes the bridge reads (OpenAPI ``controller_workfloo_model.*``).

Every model ignores unknown fields, and every enum-like value stays a plain string so a value Kiban adds
later parses (assumption K5: unknown statuses are non-terminal).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _KibanModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)


class WorkflooStatusValue(StrEnum):
    PROGRESS = "PROGRESS"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    ABANDONED = "ABANDONED"


TERMINAL_STATUSES = frozenset({"SUCCESS", "ERROR", "ABANDONED"})


class NodeType(StrEnum):
    FORM = "FORM"
    DOCUMENT = "DOCUMENT"
    LINK = "LINK"
    VALIDATION = "VALIDATION"
    TIMER = "TIMER"


class NipPhase(StrEnum):
    CREATE_ACCOUNT = "CREATE_ACCOUNT"
    VALIDATE = "VALIDATE"
    VALIDATE_2 = "VALIDATE_2"
    VALIDATED = "VALIDATED"


class NipEventStatus(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"


def is_terminal_status(status: str | None) -> bool:
    return status in TERMINAL_STATUSES


class LinkEvent(_KibanModel):
    """One NIP delivery event (``controller_workfloo_model.Event``)."""

    status: str | None = None
    date: str | None = None
    error_message: str | None = None


class NipSendError(_KibanModel):
    code: str | None = None
    recoverable: bool | None = None


class LinkStatus(_KibanModel):
    """``link`` of the status object (``LinkNipStatus``): NIP phase and delivery events."""

    key: str | None = None
    key_type_node: str | None = None
    phase: str | None = None
    nip_type: str | None = None
    send_error: NipSendError | None = None
    events: list[LinkEvent] = Field(default_factory=list)
    widget: Any = None

    @property
    def last_event(self) -> LinkEvent | None:
        return self.events[-1] if self.events else None


class VerificationStatus(_KibanModel):
    validation_id: str | None = None
    validation_type: str | None = None
    channel: str | None = None
    masked_destination: str | None = None
    remaining_retries: int | None = None


class ValidationStatus(_KibanModel):
    state: str | None = None
    instruction: str | None = None
    reviewer_note: str | None = None
    fields: list[dict[str, Any]] = Field(default_factory=list)


class WorkflooStatus(_KibanModel):
    """``GET /api/v1/workfloo/status/{id}``; also the body of the execution webhook (assumption K1)."""

    id: str
    name: str | None = None
    status: str | None = None
    current_node_id: str | None = None
    current_node_name: str | None = None
    current_node_type: str | None = None
    link: LinkStatus | None = None
    form: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    verification: VerificationStatus | None = None
    validation: ValidationStatus | None = None
    timer: dict[str, Any] | None = None
    cancelled_at: str | None = None
    cancelled_by: str | None = None

    @property
    def is_terminal(self) -> bool:
        """SUCCESS, ERROR or ABANDONED; anything else (including unknown values) is still running."""
        return is_terminal_status(self.status)

    @property
    def is_processing(self) -> bool:
        """The current step runs on its own: wait (``*_PROCESSING``, ``*_PROGRESS`` or empty)."""
        node = self.current_node_type or ""
        return not self.is_terminal and (not node or node.endswith(("_PROCESSING", "_PROGRESS")))

    @property
    def phase(self) -> str | None:
        return self.link.phase if self.link else None

    @property
    def form_field_ids(self) -> list[str]:
        """Ids of the fields the current FORM step asks for."""
        ids: list[str] = []
        for section in (self.form or {}).get("formFieldSection") or []:
            for f in (section or {}).get("fields") or []:
                if isinstance(f, dict) and isinstance(f.get("id"), str):
                    ids.append(f["id"])
        return ids


class NipResendStatus(_KibanModel):
    phase: str | None = None
    nip_type: str | None = None
    country_code: str | None = None
    phone_number: str | None = None
    email: str | None = None


class FormResume(_KibanModel):
    fields: dict[str, Any] = Field(default_factory=dict)


class DecisionTreeResult(_KibanModel):
    name_node: str | None = None
    result: bool | None = None
    message: str | None = None


class RuleMessage(_KibanModel):
    message: str | None = None


class Ruleset(_KibanModel):
    exit: str | None = None
    labels: list[str] = Field(default_factory=list)
    decision: list[RuleMessage] = Field(default_factory=list)


class LinkResume(_KibanModel):
    key: str | None = None
    phase: str | None = None
    events: list[LinkEvent] = Field(default_factory=list)


class NodeDetail(_KibanModel):
    status: str | None = None
    http_code: int | None = None
    error_message: str | None = None
    id_link: str | None = None
    id_workfloo: str | None = None


class WorkflooNode(_KibanModel):
    """One executed node of the detail (``NodeResume``)."""

    id: str | None = None
    name: str | None = None
    type: str | None = None
    created: str | None = None
    modified: str | None = None
    form: FormResume | None = None
    link: LinkResume | None = None
    decision_tree: list[DecisionTreeResult] | None = None
    ruleset: Ruleset | None = None
    detail: NodeDetail | None = None
    api_data: dict[str, Any] | None = None
    variables: list[dict[str, Any]] | None = None

    @property
    def decisionTree(self) -> list[DecisionTreeResult] | None:  # the wire name, as in the spec
        return self.decision_tree


class WorkflooDetail(_KibanModel):
    """``GET /api/v1/workfloo/{id}`` (``WorkflooResume``): the history, as ``nodes``."""

    id: str
    id_unykoo: int | None = None
    name: str | None = None
    status: str | None = None
    created: str | None = None
    modified: str | None = None
    scenery_id: str | None = None
    scenery_name: str | None = None
    labels: list[str] = Field(default_factory=list)
    cancelled_at: str | None = None
    cancelled_by: str | None = None
    nodes: list[WorkflooNode] = Field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        return is_terminal_status(self.status)

    def nodes_of_type(self, node_type: str) -> list[WorkflooNode]:
        return [n for n in self.nodes if n.type == node_type]

    @property
    def form_fields(self) -> dict[str, Any]:
        """Every answered form field, later nodes winning."""
        merged: dict[str, Any] = {}
        for node in self.nodes:
            if node.form is not None:
                merged.update(node.form.fields)
        return merged

    @property
    def ruleset_exit(self) -> str | None:
        """Exit of the last ruleset node that has one (the decision)."""
        for node in reversed(self.nodes):
            if node.ruleset is not None and node.ruleset.exit:
                return node.ruleset.exit
        return None

    @property
    def decision_tree(self) -> list[DecisionTreeResult]:
        return [r for n in self.nodes for r in (n.decision_tree or [])]

    def is_approved(self, approved_exits: Iterable[str] = ("APPROVED",)) -> bool:
        """SUCCESS whose ruleset exit is one of ``approved_exits``. A convenience for scripts; the bridge's
        own rule is ``workers.jobs.outcome`` (settings ``BRIDGE_APPROVAL_RULE``,
        ``BRIDGE_APPROVAL_EXIT_VALUES``)."""
        wanted = {e.upper() for e in approved_exits}
        return self.status == "SUCCESS" and (self.ruleset_exit or "").upper() in wanted


class ExecuteResult(_KibanModel):
    id: str
    id_unykoo: int | None = None
