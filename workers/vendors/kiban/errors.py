"""Kiban workfloo errors: a small tree under ``VendorError`` plus the parser for Kiban's error bodies.

Kiban answers errors in several shapes (API-NOTES §1.8, assumption K4): an empty body (401/404), a flat
``{field: "CODE; [CODE; ] message"}`` map (field validation), the ``{typeError, errors, errorMessage}``
envelope (execute guide) and ``{"error", "remainingRetries"}`` (OTP). ``parse_error_body`` reads all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from workers.core.errors import VendorError


@dataclass(frozen=True)
class FieldError:
    """One field of a Kiban validation answer: ``"REQUIRED_FIELD_ERROR; EMPTY_ERROR; can't be empty"``."""

    field: str
    codes: tuple[str, ...]
    message: str

    @classmethod
    def parse(cls, name: str, raw: Any) -> FieldError:
        text = raw if isinstance(raw, str) else str(raw)
        parts = [p.strip() for p in text.split(";")]
        codes = tuple(p for p in parts[:-1] if p)
        message = parts[-1] if parts else ""
        # "required" alone (execute envelope) has no code part: keep it as the message.
        return cls(field=name, codes=codes, message=message)


@dataclass
class ErrorBody:
    """What could be read from an error response body (every part optional)."""

    type_error: str | None = None
    message: str | None = None
    fields: dict[str, FieldError] = field(default_factory=dict)
    remaining_retries: int | None = None
    raw: Any = None


def parse_error_body(content: bytes) -> ErrorBody:
    """Parse any Kiban error body defensively; never raises."""
    if not content.strip():
        return ErrorBody()
    try:
        data = json.loads(content)
    except ValueError:
        return ErrorBody(message=content[:200].decode("utf-8", "replace"), raw=None)
    body = ErrorBody(raw=data)
    if not isinstance(data, dict):
        return body
    if any(k in data for k in ("typeError", "errors", "errorMessage")):
        body.type_error = data.get("typeError") if isinstance(data.get("typeError"), str) else None
        body.message = data.get("errorMessage") or None
        errors = data.get("errors")
        if isinstance(errors, dict):
            body.fields = {str(k): FieldError.parse(str(k), v) for k, v in errors.items()}
        return body
    if "error" in data and isinstance(data.get("error"), str):
        body.message = data["error"]
        retries = data.get("remainingRetries")
        body.remaining_retries = retries if isinstance(retries, int) else None
        return body
    body.fields = {str(k): FieldError.parse(str(k), v) for k, v in data.items() if isinstance(v, str)}
    return body


class KibanError(VendorError):
    """Any failed Kiban call. ``operation`` is the OpenAPI operationId."""

    def __init__(
        self,
        message: str,
        *,
        operation: str = "",
        retryable: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
        body: ErrorBody | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after, status_code=status_code)
        self.operation = operation
        self.body = body or ErrorBody()

    @property
    def type_error(self) -> str | None:
        return self.body.type_error

    @property
    def fields(self) -> dict[str, FieldError]:
        return self.body.fields


class KibanAuthError(KibanError):
    """401 (key missing or wrong) or 403 (no access; also OTP attempts exhausted)."""


class KibanNotFoundError(KibanError):
    """404: the execution, definition or scenario does not exist."""


class KibanConflictError(KibanError):
    """409: the execution is not in a state that accepts this call."""


class KibanNipAlreadySent(KibanConflictError):
    """nip/send answered 400 "NIP previously sent": the NIP is out, so job code may treat it as done."""


class KibanValidationError(KibanError):
    """400: bad body or field values (see ``fields``); OTP answers carry ``remaining_retries``."""

    @property
    def remaining_retries(self) -> int | None:
        return self.body.remaining_retries


class KibanRetryableError(KibanError):
    """429, 5xx, timeouts and connection failures: worth another attempt later."""

    def __init__(self, message: str, *, retryable: bool = True, **kwargs: Any) -> None:
        super().__init__(message, retryable=retryable, **kwargs)
