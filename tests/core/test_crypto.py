"""The data key ring: envelopes open only under the key, purpose and id they were sealed for."""

from __future__ import annotations

import base64
import os

import pytest

from workers.core import crypto
from workers.core.crypto import KeyRing, generate_entry, parse_entry
from workers.core.errors import DataKeyError, SettingsError
from workers.core.settings import load_settings

FORM = {"first_name": "Zoé-CANARY", "rfc": "GODE-561231-GR8", "telefono": 5512345678}


def _ring(*entries: str) -> KeyRing:
    return KeyRing.from_entries(entries)


def test_round_trip_and_the_envelope_holds_no_plaintext() -> None:
    ring = _ring(generate_entry("k1"))
    sealed = ring.seal_json(FORM, crypto.FORM, "cmd-start-1")
    assert sealed.startswith("wfe1.k1.") and sealed.isascii()
    for value in ("CANARY", "GODE", "5512345678", "first_name"):
        assert value not in sealed
    assert ring.open_json(sealed, crypto.FORM, "cmd-start-1") == FORM
    assert ring.open_text(ring.seal_text("12345678", crypto.NIP, "r"), crypto.NIP, "r") == "12345678"


def test_every_seal_uses_a_fresh_nonce() -> None:
    ring = _ring(generate_entry("k1"))
    assert ring.seal(b"same", "p", "id") != ring.seal(b"same", "p", "id")


def test_rotation_old_kid_still_opens_new_kid_seals() -> None:
    old, new = generate_entry("old"), generate_entry("new")
    sealed_before = _ring(old).seal_json(FORM, crypto.FORM, "cmd-1")
    rotated = _ring(new, old)
    assert rotated.open_json(sealed_before, crypto.FORM, "cmd-1") == FORM
    sealed_after = rotated.seal_json(FORM, crypto.FORM, "cmd-2")
    assert sealed_after.split(".")[1] == "new"
    with pytest.raises(DataKeyError, match="no configured data key has id 'new'"):
        _ring(old).open(sealed_after, crypto.FORM, "cmd-2")


def test_a_same_kid_with_another_key_does_not_open() -> None:
    sealed = _ring(generate_entry("k1")).seal(b"x", "p", "id")
    with pytest.raises(DataKeyError, match="failed authentication"):
        _ring(generate_entry("k1")).open(sealed, "p", "id")


def _flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: _flip(e),  # ciphertext or tag
        lambda e: ".".join([*e.split(".")[:2], _flip(e.split(".")[2]), e.split(".")[3]]),  # nonce
        lambda e: e.replace("wfe1.", "wfe2.", 1),  # version
        lambda e: e[:20],  # truncated
        lambda e: "plain text",
    ],
)
def test_a_tampered_envelope_fails(tamper: object) -> None:
    ring = _ring(generate_entry("k1"))
    sealed = ring.seal_json(FORM, crypto.FORM, "cmd-1")
    with pytest.raises(DataKeyError) as caught:
        ring.open(tamper(sealed), crypto.FORM, "cmd-1")  # type: ignore[operator]
    assert "CANARY" not in str(caught.value)


def test_another_id_or_purpose_fails_so_a_ciphertext_cannot_move() -> None:
    ring = _ring(generate_entry("k1"))
    sealed = ring.seal_json(FORM, crypto.FORM, "cmd-1")
    with pytest.raises(DataKeyError, match="failed authentication"):
        ring.open(sealed, crypto.FORM, "cmd-2")
    with pytest.raises(DataKeyError, match="failed authentication"):
        ring.open(sealed, crypto.NIP, "cmd-1")


def test_errors_never_echo_keys_or_data() -> None:
    entry = generate_entry("k1")
    raw = entry.split(":", 1)[1]
    ring = _ring(entry)
    sealed = ring.seal_json(FORM, crypto.FORM, "c")
    messages = []
    for bad in (sealed[:-2] + "zz", sealed.replace(".k1.", ".k9.")):
        with pytest.raises(DataKeyError) as caught:
            ring.open(bad, crypto.FORM, "c")
        messages.append(str(caught.value) + repr(caught.value))
    messages.append(repr(ring))
    for text in messages:
        assert raw not in text and "CANARY" not in text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no-colon", "kid:base64"),
        ("bad kid!:AAAA", "kid:base64"),
        ("k1:not base64!", "not valid base64"),
        ("k1:" + base64.b64encode(os.urandom(16)).decode(), "32 bytes"),
    ],
)
def test_malformed_entries_are_refused_without_their_value(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_entry(entry)
    assert entry.split(":", 1)[-1] not in str(caught.value) or ":" not in entry
    with pytest.raises(SettingsError) as refused:
        load_settings(bridge_data_keys=entry)
    assert "BRIDGE_DATA_KEYS" in str(refused.value)
    assert entry.split(":", 1)[-1] not in str(refused.value)


def test_settings_refuse_a_kid_listed_twice() -> None:
    with pytest.raises(SettingsError, match=r"BRIDGE_DATA_KEYS.*unique"):
        load_settings(bridge_data_keys=f"{generate_entry('a')},{generate_entry('a')}")


def test_settings_parse_the_ring_and_keep_the_keys_secret() -> None:
    old, new = generate_entry("old"), generate_entry("new")
    settings = load_settings(bridge_data_keys=f"{new}, {old}")
    ring = KeyRing.from_settings(settings)
    assert (ring.primary, ring.kids) == ("new", ["new", "old"])
    assert new.split(":")[1] not in repr(settings) and new in settings.secret_values()


def test_no_key_is_a_settings_error_naming_the_variable() -> None:
    settings = load_settings(bridge_data_keys="")
    with pytest.raises(SettingsError, match=r"^BRIDGE_DATA_KEYS is not set") as caught:
        crypto.require_keys(settings)
    assert "\n" not in str(caught.value)
