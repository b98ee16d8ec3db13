"""Normalising a finished workfloo detail: status, decision, applicant (no PII in event data)."""

from __future__ import annotations

from typing import Any

from workers.core.events import EventType
from workers.core.settings import load_settings
from workers.jobs.outcome import APPROVED, REJECTED, UNDECIDED, normalise


def detail(status: str = "SUCCESS", **node: Any) -> dict[str, Any]:
    form = {
        "type": "FORM",
        "form": {"fields": {"firstName": "Ana", "lastName1": "López", "email": "ana@example.com",
                            "rfc": "LOLA800101AB1", "phone": "5512345678"}},
    }  # fmt: skip
    return {"id": "e1", "status": status, "nodes": [form, {"type": "RULESET", **node}]}


def test_ruleset_exit_approves_and_applicant_is_read_from_form() -> None:
    outcome = normalise("e1", detail(ruleset={"exit": "APPROVED"}), load_settings())
    assert outcome.decision == APPROVED and outcome.approved
    assert outcome.decision_source == "ruleset"
    assert outcome.applicant.first_name == "Ana" and outcome.applicant.last_name == "López"
    assert outcome.applicant.email == "ana@example.com"
    assert outcome.event_type is EventType.WORKFLOO_COMPLETED


def test_event_data_carries_no_name_email_rfc_or_phone_only_flags() -> None:
    data = normalise("e1", detail(ruleset={"exit": "APPROVED"}), load_settings()).event_data()
    text = repr(data)
    for secret in ("Ana", "López", "ana@example.com", "LOLA800101AB1", "5512345678"):
        assert secret not in text
    assert "applicant" not in data
    assert (data["has_name"], data["has_email"]) == (True, True)


def test_flags_say_when_no_name_or_email_was_found() -> None:
    doc = {"id": "e1", "status": "SUCCESS", "nodes": [{"type": "FORM", "form": {"fields": {"x": "1"}}}]}
    data = normalise("e1", doc, load_settings()).event_data()
    assert (data["has_name"], data["has_email"]) == (False, False)


def test_other_exit_rejects() -> None:
    outcome = normalise("e1", detail(ruleset={"exit": "DECLINED"}), load_settings())
    assert outcome.decision == REJECTED and not outcome.approved


def test_decision_tree_when_no_ruleset() -> None:
    good = detail(decisionTree=[{"nameNode": "score", "result": True}, {"nameNode": "age", "result": True}])
    bad = detail(decisionTree=[{"nameNode": "score", "result": True}, {"nameNode": "age", "result": False}])
    assert normalise("e1", good, load_settings()).decision == APPROVED
    rejected = normalise("e1", bad, load_settings())
    assert rejected.decision == REJECTED and rejected.decision_detail == "age"


def test_no_decision_signal_is_undecided_unless_rule_is_status() -> None:
    assert normalise("e1", detail(), load_settings()).decision == UNDECIDED
    assert normalise("e1", detail(), load_settings(approval_rule="status")).decision == APPROVED


def test_abandoned_and_error_map_to_their_events() -> None:
    abandoned = normalise("e1", detail("ABANDONED", ruleset={"exit": "APPROVED"}), load_settings())
    failed = normalise("e1", detail("ERROR"), load_settings())
    assert abandoned.event_type is EventType.WORKFLOO_ABANDONED and not abandoned.approved
    assert failed.event_type is EventType.WORKFLOO_FAILED and failed.decision == REJECTED


def test_field_ids_are_settings() -> None:
    doc = {
        "id": "e1",
        "status": "SUCCESS",
        "nodes": [{"type": "FORM", "form": {"fields": {"correo_x": "a@b.co"}}}],
    }
    s = load_settings(applicant_email_fields="correo_x")
    assert normalise("e1", doc, s).applicant.email == "a@b.co"


def test_bad_nip_pattern_is_refused_at_start_up() -> None:
    from workers.core.errors import SettingsError

    try:
        load_settings(nip_invalid_destination_patterns="unknown,(unclosed")
    except SettingsError as exc:
        assert "BRIDGE_NIP_INVALID_DESTINATION_PATTERNS" in str(exc)
    else:
        raise AssertionError("an invalid regex must be refused")
