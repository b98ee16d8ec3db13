"""Kompliant client, KSig1 signing and models (its exceptions live in ``workers.core.errors``)."""

from workers.vendors.kompliant.client import (
    KompliantClient,
    business_application_details,
    get_kompliant_client,
)
from workers.vendors.kompliant.models import CreatedWorkflow, Workflow, WorkflowState, WorkflowType

__all__ = [
    "CreatedWorkflow",
    "KompliantClient",
    "Workflow",
    "WorkflowState",
    "WorkflowType",
    "business_application_details",
    "get_kompliant_client",
]
