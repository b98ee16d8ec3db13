"""Normalise a finished Kiban execution (``WorkflooDetail``) into status, decision and applicant.

The decision comes from the workfloo's own rules: the last ``ruleset.exit`` (an exit value listed in
``approval_exit_values`` approves, any other exit rejects), else the ``decisionTree`` (approved when every
result is true). ``approval_rule`` picks which of those count (``status`` = SUCCESS alone approves).
The applicant's names and e-mail come from FORM nodes (field ids are settings) for the Kompliant
hand-off only: event data says whether they were found (``has_name``, ``has_email``), never what they
are, and NIP, RFC and phone are never read at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.core.events import EventType
from workers.core.settings import Settings

TERMINAL_STATUSES = frozenset({"SUCCESS", "ERROR", "ABANDONED"})

APPROVED = "approved"
REJECTED = "rejected"
UNDECIDED = "undecided"


@dataclass(frozen=True)
class Applicant:
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None

    def public(self) -> dict[str, bool]:
        """What may appear in events: whether a name and an e-mail are known, never the values."""
        return {"has_name": bool(self.first_name or self.last_name), "has_email": bool(self.email)}


@dataclass(frozen=True)
class Outcome:
    execution_id: str
    status: str
    decision: str
    decision_source: str | None
    decision_detail: str | None
    applicant: Applicant
    cancelled: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def approved(self) -> bool:
        return self.status == "SUCCESS" and self.decision == APPROVED

    @property
    def event_type(self) -> EventType:
        if self.status == "SUCCESS":
            return EventType.WORKFLOO_COMPLETED
        if self.status == "ABANDONED":
            return EventType.WORKFLOO_ABANDONED
        return EventType.WORKFLOO_FAILED

    def event_data(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "decision": self.decision,
            "decision_source": self.decision_source,
            "decision_detail": self.decision_detail,
            "cancelled": self.cancelled,
            **self.applicant.public(),
        }


def as_mapping(detail: Any) -> dict[str, Any]:
    """A typed model (pydantic, by Kiban's JSON names) or an already-decoded dict."""
    if isinstance(detail, Mapping):
        return dict(detail)
    dump = getattr(detail, "model_dump", None)
    if callable(dump):
        result = dump(by_alias=True, mode="json")
        if isinstance(result, dict):
            return result
    raise TypeError(f"cannot read a workfloo detail from {type(detail).__name__}")


def _get(mapping: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in mapping and mapping[name] is not None:
            return mapping[name]
    return None


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _form_values(nodes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """All FORM field values, later nodes winning, keyed by normalised field id."""
    values: dict[str, str] = {}
    for node in nodes:
        form = node.get("form")
        if not isinstance(form, Mapping):
            continue
        fields = form.get("fields")
        if isinstance(fields, Mapping):
            items = list(fields.items())
        elif isinstance(fields, list):  # list-item shape: [{id, name, value}]
            items = [
                (str(f.get("id") or f.get("name")), f.get("value")) for f in fields if isinstance(f, dict)
            ]
        else:
            continue
        for key, value in items:
            if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip():
                values[_norm(str(key))] = str(value).strip()
    return values


def _first(values: Mapping[str, str], candidates: Iterable[str]) -> str | None:
    for candidate in candidates:
        found = values.get(_norm(candidate))
        if found:
            return found
    return None


def _ruleset_exit(nodes: list[Mapping[str, Any]]) -> str | None:
    found = None
    for node in nodes:
        ruleset = node.get("ruleset")
        if isinstance(ruleset, Mapping):
            exit_value = ruleset.get("exit")
            if isinstance(exit_value, str) and exit_value.strip():
                found = exit_value.strip()
    return found


def _decision_tree(nodes: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for node in nodes:
        tree = _get(node, "decisionTree", "decision_tree")
        if isinstance(tree, list) and tree:
            found = [item for item in tree if isinstance(item, Mapping)]
    return found


def decide(
    status: str, nodes: list[Mapping[str, Any]], settings: Settings
) -> tuple[str, str | None, str | None]:
    """(decision, source, detail) for a terminal execution."""
    if status != "SUCCESS":
        return REJECTED if status == "ERROR" else UNDECIDED, "status", status
    rule = settings.approval_rule
    if rule == "status":
        return APPROVED, "status", status
    approve_exits = {value.lower() for value in settings.approval_exit_values}
    if rule in {"ruleset_or_tree", "ruleset"}:
        exit_value = _ruleset_exit(nodes)
        if exit_value is not None:
            decision = APPROVED if exit_value.lower() in approve_exits else REJECTED
            return decision, "ruleset", exit_value
    if rule in {"ruleset_or_tree", "tree"}:
        tree = _decision_tree(nodes)
        if tree:
            failed = [str(item.get("nameNode") or "?") for item in tree if item.get("result") is not True]
            if failed:
                return REJECTED, "decisionTree", ",".join(failed)[:200]
            return APPROVED, "decisionTree", None
    return UNDECIDED, None, None


def normalise(execution_id: str, detail: Any, settings: Settings) -> Outcome:
    data = as_mapping(detail)
    status = str(data.get("status") or "").upper()
    nodes = [node for node in data.get("nodes") or [] if isinstance(node, Mapping)]
    decision, source, decision_detail = decide(status, nodes, settings)
    values = _form_values(nodes)
    applicant = Applicant(
        first_name=_first(values, settings.applicant_first_name_fields),
        last_name=_first(values, settings.applicant_last_name_fields),
        email=_first(values, settings.applicant_email_fields),
    )
    return Outcome(
        execution_id=execution_id,
        status=status,
        decision=decision,
        decision_source=source,
        decision_detail=decision_detail,
        applicant=applicant,
        cancelled=bool(_get(data, "cancelledAt", "cancelled_at")),
    )
