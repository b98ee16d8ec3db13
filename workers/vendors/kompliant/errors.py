"""Kompliant errors: ``{meta, errors[]}`` envelopes mapped onto a small tree under ``VendorError``."""

from __future__ import annotations

from typing import Any

from workers.core.errors import VendorError


class KompliantError(VendorError):
    """Any failed Kompliant call; ``code``/``sub_code``/``entity_type`` from the first error object."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        code: str | None = None,
        sub_code: str | None = None,
        entity_type: str | None = None,
        trace_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after, status_code=status_code)
        self.method = method
        self.code = code
        self.sub_code = sub_code
        self.entity_type = entity_type
        self.trace_id = trace_id
        self.errors = errors or []

    def has_sub_code(self, sub_code: str) -> bool:
        """Case-insensitive match on any error object's ``sub_code`` (assumption P5)."""
        wanted = sub_code.upper()
        return any(str(e.get("sub_code") or "").upper() == wanted for e in self.errors) or (
            (self.sub_code or "").upper() == wanted
        )


class KompliantAuthError(KompliantError):
    """401/403: signature, API key or auth token rejected."""


class KompliantBadRequest(KompliantError):
    """BAD_REQUEST: missing or invalid parameters."""


class KompliantNotFound(KompliantError):
    """ENTITY_NOT_FOUND (HTTP 400): an id in the request does not exist."""


class KompliantRuleViolation(KompliantError):
    """SYSTEM_RULE_VIOLATION: e.g. WORKFLOW_STARTED, WORKFLOW_ENDED, SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT."""


class KompliantConfigurationViolation(KompliantError):
    """ACCOUNT_CONFIGURATION_VIOLATION: e.g. DUPLICATE_EMAIL."""


class KompliantRetryableError(KompliantError):
    """429, 5xx, timeouts and connection failures."""

    def __init__(self, message: str, *, retryable: bool = True, **kwargs: Any) -> None:
        super().__init__(message, retryable=retryable, **kwargs)


ERROR_CLASSES: dict[str, type[KompliantError]] = {
    "BAD_REQUEST": KompliantBadRequest,
    "ENTITY_NOT_FOUND": KompliantNotFound,
    "SYSTEM_RULE_VIOLATION": KompliantRuleViolation,
    "ACCOUNT_CONFIGURATION_VIOLATION": KompliantConfigurationViolation,
}
