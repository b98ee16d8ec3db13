"""Kiban workfloo client, typed models and errors."""

from workers.vendors.kiban.client import KibanClient, get_kiban_client
from workers.vendors.kiban.errors import (
    FieldError,
    KibanAuthError,
    KibanConflictError,
    KibanError,
    KibanNipAlreadySent,
    KibanNotFoundError,
    KibanRetryableError,
    KibanValidationError,
)
from workers.vendors.kiban.models import (
    LinkEvent,
    LinkStatus,
    NipEventStatus,
    NipPhase,
    NipResendStatus,
    WorkflooDetail,
    WorkflooNode,
    WorkflooStatus,
)

__all__ = [
    "FieldError",
    "KibanAuthError",
    "KibanClient",
    "KibanConflictError",
    "KibanError",
    "KibanNipAlreadySent",
    "KibanNotFoundError",
    "KibanRetryableError",
    "KibanValidationError",
    "LinkEvent",
    "LinkStatus",
    "NipEventStatus",
    "NipPhase",
    "NipResendStatus",
    "WorkflooDetail",
    "WorkflooNode",
    "WorkflooStatus",
    "get_kiban_client",
]
