"""Configuration model of one HTTP subscriber (no heavy imports: ``workers.core.settings`` loads it).

Delivery, signing and the SSRF guard live in ``workers.fanout.webhooks``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from fnmatch import fnmatchcase
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's key prefix, not a secret

DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Standard Webhooks: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_schedule(value: list[float]) -> list[float]:
    if not value or any(v < 0 for v in value):
        raise ValueError("must be a non-empty list of seconds >= 0")
    return value


RetrySchedule = Annotated[
    list[float], NoDecode, BeforeValidator(_split_commas), AfterValidator(_check_schedule)
]


def matches(patterns: list[str] | tuple[str, ...] | None, event_type: str) -> bool:
    """True when ``event_type`` matches one of the shell-style patterns (``nip.*``); no patterns = all."""
    if not patterns:
        return True
    return any(fnmatchcase(event_type, pattern) for pattern in patterns)


class HttpSubscriber(BaseModel):
    """One endpoint that receives matching events as signed POSTs (Standard Webhooks)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str
    types: list[str] = Field(default_factory=lambda: ["*"], description="Event type patterns, e.g. nip.*")
    secret: SecretStr = Field(description="whsec_ + base64 key, as Standard Webhooks defines it.")
    id: str = Field(default="", description="Stable name; defaults to a hash of the URL.")
    allow_private: bool = Field(default=False, description="Allow private/loopback/link-local addresses.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials")
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(SECRET_PREFIX):
            raise ValueError(f"must start with {SECRET_PREFIX}")
        try:
            key = base64.b64decode(raw[len(SECRET_PREFIX) :] + "==", validate=False)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by base64") from None
        if len(key) < 16:
            raise ValueError("key must be at least 16 bytes (24 recommended)")
        return value

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if value and not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("may only hold letters, digits, - and _")
        return value

    @property
    def key(self) -> str:
        """The subscriber's stable identifier (its ``id`` or a hash of its URL)."""
        return self.id or hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def wants(self, event_type: str) -> bool:
        return matches(self.types, event_type)
