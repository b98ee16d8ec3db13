"""The receiver → workers contract the jobs read: payload keys and the one id pattern."""

from __future__ import annotations

import re
import uuid

import pytest
from pydantic import ValidationError

from workers.core import contract, crypto
from workers.core.contract import (
    EXECUTION_ID_RE,
    ID_PATTERN,
    NipEventBody,
    ResendNipCommand,
    StartCommand,
    StatusWebhookBody,
    ValidateNipCommand,
)
from workers.core.crypto import KeyRing, generate_entry
from workers.core.errors import DataKeyError


def test_builders_fill_every_key_the_jobs_read() -> None:
    ring = KeyRing.from_entries([generate_entry("k1")])
    start = contract.start_command("cmd-start-1", {"email": "a@b.co"}, None, ring)
    validate = contract.validate_command("cmd-nip-1", "657118e1d511b6e54fe2a969")
    resend = contract.resend_command("cmd-resend-1", "657118e1d511b6e54fe2a969")
    assert set(start) == StartCommand.__required_keys__ | {"sealed_form"}
    assert set(validate) == ValidateNipCommand.__required_keys__
    assert set(resend) == ResendNipCommand.__required_keys__
    assert validate["nip_ref"] == "cmd-nip-1" and resend["resend"] is None


def test_the_start_form_is_sealed_for_its_own_command() -> None:
    ring = KeyRing.from_entries([generate_entry("k1")])
    start = contract.start_command("cmd-start-1", {"email": "canary@b.co"}, "approved", ring)
    assert "canary" not in repr(start) and "form" not in start
    assert ring.open_json(start["sealed_form"], crypto.FORM, "cmd-start-1") == {"email": "canary@b.co"}
    with pytest.raises(DataKeyError):
        ring.open_json(start["sealed_form"], crypto.FORM, "cmd-start-2")


@pytest.mark.parametrize("value", ["657118e1d511b6e54fe2a969", str(uuid.uuid4()), "a", "x" * 64, "A_b-9"])
def test_kiban_ids_fit_the_one_pattern(value: str) -> None:
    assert EXECUTION_ID_RE.fullmatch(value)
    assert StatusWebhookBody.model_validate({"id": value, "status": "RUNNING"}).id == value
    assert NipEventBody.model_validate({"event": "SENT", "date": "d", "linkId": value}).linkId == value


@pytest.mark.parametrize("value", ["", "x" * 65, "../etc", "abc\n", "a b", "é"])
def test_anything_else_is_refused_everywhere(value: str) -> None:
    assert not EXECUTION_ID_RE.fullmatch(value)
    with pytest.raises(ValidationError):
        StatusWebhookBody.model_validate({"id": value, "status": "RUNNING"})
    with pytest.raises(ValidationError):
        NipEventBody.model_validate({"event": "SENT", "date": "d", "linkId": value})


def test_the_compiled_check_is_built_from_the_pattern() -> None:
    assert EXECUTION_ID_RE.pattern == ID_PATTERN
    assert re.fullmatch(ID_PATTERN, "657118e1d511b6e54fe2a969")
