"""Kiban workfloo client and typed models (its exceptions live in ``workers.core.errors``)."""

from workers.vendors.kiban.client import KibanClient, get_kiban_client
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
    "KibanClient",
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
