"""Applicant data sealed at rest: AES-256-GCM under a key ring of ``BRIDGE_DATA_KEYS``.

``BRIDGE_DATA_KEYS`` is a comma-separated list of ``kid:base64-of-32-bytes``. The first key seals; every
key opens the envelopes that name its key id, so a key rotates without losing jobs in flight: add the new
key second everywhere, then move it first, then drop the old one once nothing sealed under it is left
(the longest job or NIP retention).

An envelope is one ASCII string, safe in JSON job payloads and Redis strings::

    wfe1.<kid>.<nonce, base64url>.<ciphertext and tag, base64url>

The associated data binds it to its version, key id, purpose and id (``wfe1|<kid>|form|<command_id>``),
so a ciphertext moved to another job, another purpose or another key id fails to open. Failures raise
``DataKeyError`` naming the key id at most, never a key or the data.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from workers.core.errors import DataKeyError, SettingsError


class HasDataKeys(Protocol):
    """What the ring reads of ``workers.core.settings.Settings`` (which imports this module)."""

    @property
    def bridge_data_keys(self) -> Sequence[SecretStr]: ...


VERSION: Final = "wfe1"
"""Envelope format version (the first dot-separated part)."""

SETTING: Final = "BRIDGE_DATA_KEYS"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")

FORM: Final = "form"
"""Purpose of a start command's form; the id is the command id."""
NIP: Final = "nip"
"""Purpose of a stashed NIP; the id is its reference (the validate command id)."""

MISSING_KEY_MESSAGE: Final = (
    f"{SETTING} is not set: applicant data is encrypted at rest and needs a key "
    "(make one with `workfloo-bridge keygen`)"
)


def parse_entry(entry: str) -> tuple[str, bytes]:
    """``kid:base64`` → (kid, 32-byte key); ``ValueError`` with a message that never holds the key."""
    kid, sep, encoded = entry.strip().partition(":")
    if not sep or not KID_RE.fullmatch(kid):
        raise ValueError("each entry must be kid:base64-key, kid of 1-32 letters, digits, - or _")
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key {kid!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"key {kid!r} must decode to {KEY_BYTES} bytes")
    return kid, key


def generate_entry(kid: str | None = None) -> str:
    """A fresh ``kid:base64`` entry for ``BRIDGE_DATA_KEYS`` (kid default: ``k`` + 8 random hex)."""
    kid = kid or "k" + secrets.token_hex(4)
    if not KID_RE.fullmatch(kid):
        raise ValueError("kid must be 1-32 letters, digits, - or _")
    return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(kid: str, purpose: str, ref: str) -> bytes:
    return f"{VERSION}|{kid}|{purpose}|{ref}".encode()


def is_envelope(value: object) -> bool:
    return isinstance(value, str) and value.startswith(VERSION + ".")


class KeyRing:
    """The configured data keys: ``seal`` with the first, ``open`` with the one the envelope names."""

    def __init__(self, keys: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
        pairs = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        if not pairs:
            raise DataKeyError(MISSING_KEY_MESSAGE)
        self._keys: dict[str, AESGCM] = {}
        for kid, key in pairs:
            if kid in self._keys:
                raise DataKeyError(f"{SETTING}: key id {kid!r} is listed twice")
            self._keys[kid] = AESGCM(key)
        self.primary = pairs[0][0]

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> KeyRing:
        pairs = []
        for entry in entries:
            try:
                pairs.append(parse_entry(entry))
            except ValueError as exc:
                raise DataKeyError(f"invalid setting {SETTING}: {exc}") from None
        return cls(pairs)

    @classmethod
    def from_settings(cls, settings: HasDataKeys) -> KeyRing:
        """The ring of ``BRIDGE_DATA_KEYS``; ``DataKeyError`` when none is configured."""
        return cls.from_entries(item.get_secret_value() for item in settings.bridge_data_keys)

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def seal(self, plaintext: bytes, purpose: str, ref: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.primary].encrypt(nonce, plaintext, _aad(self.primary, purpose, ref))
        return f"{VERSION}.{self.primary}.{_b64(nonce)}.{_b64(sealed)}"

    def open(self, envelope: str, purpose: str, ref: str) -> bytes:
        parts = envelope.split(".") if isinstance(envelope, str) else []
        if len(parts) != 4 or parts[0] != VERSION:
            raise DataKeyError(f"not a {VERSION} envelope")
        _, kid, nonce_text, sealed_text = parts
        aead = self._keys.get(kid)
        if aead is None:
            shown = repr(kid) if KID_RE.fullmatch(kid) else "(malformed)"
            raise DataKeyError(f"no configured data key has id {shown}")
        try:
            nonce, sealed = _unb64(nonce_text), _unb64(sealed_text)
        except (binascii.Error, ValueError):
            raise DataKeyError("envelope is not base64url") from None
        if len(nonce) != NONCE_BYTES:
            raise DataKeyError("envelope nonce has the wrong length")
        try:
            return aead.decrypt(nonce, sealed, _aad(kid, purpose, ref))
        except InvalidTag:
            raise DataKeyError(
                f"envelope failed authentication under key {kid!r} (tampered, or sealed for another "
                f"{purpose} id)"
            ) from None

    def seal_json(self, value: Any, purpose: str, ref: str) -> str:
        return self.seal(orjson.dumps(value), purpose, ref)

    def open_json(self, envelope: str, purpose: str, ref: str) -> Any:
        return orjson.loads(self.open(envelope, purpose, ref))

    def seal_text(self, value: str, purpose: str, ref: str) -> str:
        return self.seal(value.encode(), purpose, ref)

    def open_text(self, envelope: str, purpose: str, ref: str) -> str:
        return self.open(envelope, purpose, ref).decode()

    def __repr__(self) -> str:
        return f"KeyRing(primary={self.primary!r}, kids={self.kids!r})"


def require_keys(settings: HasDataKeys) -> KeyRing:
    """What the receiver and the workers call where they start: the ring, or ``SettingsError`` (one line
    naming ``BRIDGE_DATA_KEYS``) when no key is configured."""
    try:
        return KeyRing.from_settings(settings)
    except DataKeyError as exc:
        raise SettingsError(str(exc)) from None


__all__ = [
    "FORM",
    "KEY_BYTES",
    "NIP",
    "SETTING",
    "VERSION",
    "KeyRing",
    "generate_entry",
    "is_envelope",
    "parse_entry",
    "require_keys",
]
