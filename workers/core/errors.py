"""Every exception the bridge raises on purpose, in one tree (``Retry-After`` is parsed in
``workers.vendors.http``).

The retry layer (``workers.jobs.retry``) reads ``retryable`` and ``retry_after`` off any ``BridgeError``;
anything else is a bug and dead-letters at once. Vendor clients never retry: they classify the failure
into this tree and raise.

Hierarchy:

* BridgeError
  + SettingsError
  + DataKeyError
  + RedisUrlError (also a ``ValueError``)
  + IntakeUnavailableError (retryable)
  + TransientError (retryable)
  | + DurabilityError (retryable)
  + PermanentError
  + JobFailedError
  + LeaseLostError
  + DestinationRefusedError
  + ErasureRefusedError
  + VendorError
    + KibanError
    | + KibanAuthError
    | + KibanNotFoundError
    | + KibanConflictError
    | | + KibanNipAlreadySentError
    | + KibanValidationError
    | + KibanRetryableError (retryable)
    + KompliantError
      + KompliantAuthError
      + KompliantBadRequestError
      + KompliantNotFoundError
      + KompliantRuleViolationError
      + KompliantConfigurationViolationError
      + KompliantRetryableError (retryable)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class BridgeError(Exception):
    """Root of the tree: ``retryable`` says whether another attempt can succeed, ``retry_after`` is the
    least wait in seconds when the other side named one."""

    retryable: bool = False
    retry_after: float | None = None

    def __init__(
        self, message: str = "", *, retryable: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = type(self).retryable if retryable is None else retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


# --- configuration ---------------------------------------------------------------------------------


class SettingsError(BridgeError):
    """The environment holds an invalid setting; the message names the variable, never its value.

    Entry points turn it into exit code 2 with the message as the one line on stderr."""


class DataKeyError(BridgeError):
    """Applicant data could not be sealed or opened: no data key configured, a key id no configured key
    has, or an envelope that fails authentication (tampered, or bound to another purpose or id). The
    message names the key id at most, never a key or the data. Not retryable: the same bytes fail again."""


class RedisUrlError(BridgeError, ValueError):
    """The Redis URL cannot be understood; the message never contains the password. A ``ValueError`` too,
    because it is one: a bad value handed to ``redis_from_url``."""


# --- receiver and jobs -----------------------------------------------------------------------------


class IntakeUnavailableError(BridgeError):
    """Redis did not confirm an intake write in time: the caller answers 503 and the sender retries."""

    retryable = True


class TransientError(BridgeError):
    """A condition worth retrying that is not a vendor error (e.g. Kiban not terminal yet, lock busy)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True, retry_after=retry_after)


class DurabilityError(TransientError):
    """Redis did not confirm, in time, that the writes so far reached the configured durability level
    (``BRIDGE_DURABILITY``): the step retries instead of calling a vendor on an anchor it may lose."""


class PermanentError(BridgeError):
    """A condition retrying cannot fix (bad input, missing data): dead-letter at once."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class JobFailedError(BridgeError):
    """Raised to move a job into RQ's FailedJobRegistry; the message is the (redacted) reason."""


class LeaseLostError(BridgeError):
    """This run of a job lost its lease (``workers.jobs.lease``): the reaper gave the job to another
    run, which owns its effects now. The run stops without an effect, a retry or a dead letter."""


class DestinationRefusedError(BridgeError):
    """The subscriber URL resolves to an address the SSRF guard does not allow."""


class ErasureRefusedError(BridgeError):
    """An application still has work in flight (queued, started or scheduled jobs, or an open
    execution), so it is not erased; the message counts what is in flight and names nobody."""


# --- vendors ---------------------------------------------------------------------------------------


class VendorError(BridgeError):
    """A failed vendor call. ``status_code`` is None for transport failures (timeouts, resets)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.status_code = status_code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code}, "
            f"retryable={self.retryable}, retry_after={self.retry_after})"
        )


@dataclass(frozen=True)
class FieldError:
    """One field of a Kiban validation answer: ``"REQUIRED_FIELD_ERROR; EMPTY_ERROR; can't be empty"``."""

    field: str
    codes: tuple[str, ...]
    message: str


@dataclass
class ErrorBody:
    """What could be read from a Kiban error response body (every part optional)."""

    type_error: str | None = None
    message: str | None = None
    fields: dict[str, FieldError] = field(default_factory=dict)
    remaining_retries: int | None = None
    raw: Any = None


class KibanError(VendorError):
    """Any failed Kiban call. ``operation`` is the OpenAPI operationId."""

    def __init__(
        self,
        message: str,
        *,
        operation: str = "",
        retryable: bool | None = None,
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


class KibanNipAlreadySentError(KibanConflictError):
    """nip/send answered 400 "NIP previously sent": the NIP is out, so job code may treat it as done."""


class KibanValidationError(KibanError):
    """400: bad body or field values (see ``fields``); OTP answers carry ``remaining_retries``."""

    @property
    def remaining_retries(self) -> int | None:
        return self.body.remaining_retries


class KibanRetryableError(KibanError):
    """429, 5xx, timeouts and connection failures: worth another attempt later."""

    retryable = True


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
        retryable: bool | None = None,
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


class KompliantBadRequestError(KompliantError):
    """BAD_REQUEST: missing or invalid parameters."""


class KompliantNotFoundError(KompliantError):
    """ENTITY_NOT_FOUND (HTTP 400): an id in the request does not exist."""


class KompliantRuleViolationError(KompliantError):
    """SYSTEM_RULE_VIOLATION: e.g. WORKFLOW_STARTED, WORKFLOW_ENDED, SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT."""


class KompliantConfigurationViolationError(KompliantError):
    """ACCOUNT_CONFIGURATION_VIOLATION: e.g. DUPLICATE_EMAIL."""


class KompliantRetryableError(KompliantError):
    """429, 5xx, timeouts and connection failures."""

    retryable = True
