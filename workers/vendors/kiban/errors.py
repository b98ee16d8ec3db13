"""Kiban's error bodies, read into ``workers.core.errors.ErrorBody`` for the ``KibanError`` tree there.

Kiban answers errors in several shapes (docs/vendor-assumptions.md §1.8, assumption K4): an empty body
(401/404), a flat ``{field: "CODE; [CODE; ] message"}`` map (field validation), the ``{typeError, errors,
errorMessage}`` envelope (execute guide) and ``{"error", "remainingRetries"}`` (OTP). ``parse_error_body``
reads all of them.
"""

from __future__ import annotations

import json
from typing import Any

from workers.core.errors import ErrorBody, FieldError


def parse_field_error(name: str, raw: Any) -> FieldError:
    """``"REQUIRED_FIELD_ERROR; EMPTY_ERROR; can't be empty"`` → codes and message."""
    text = raw if isinstance(raw, str) else str(raw)
    parts = [p.strip() for p in text.split(";")]
    codes = tuple(p for p in parts[:-1] if p)
    message = parts[-1] if parts else ""
    # "required" alone (execute envelope) has no code part: keep it as the message.
    return FieldError(field=name, codes=codes, message=message)


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
            body.fields = {str(k): parse_field_error(str(k), v) for k, v in errors.items()}
        return body
    if "error" in data and isinstance(data.get("error"), str):
        body.message = data["error"]
        retries = data.get("remainingRetries")
        body.remaining_retries = retries if isinstance(retries, int) else None
        return body
    body.fields = {str(k): parse_field_error(str(k), v) for k, v in data.items() if isinstance(v, str)}
    return body
