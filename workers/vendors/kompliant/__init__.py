"""Kompliant client, KSig1 signing, models and errors."""

from workers.vendors.kompliant.client import (
    KompliantClient,
    business_application_details,
    get_kompliant_client,
)
from workers.vendors.kompliant.errors import (
    KompliantAuthError,
    KompliantBadRequest,
    KompliantConfigurationViolation,
    KompliantError,
    KompliantNotFound,
    KompliantRetryableError,
    KompliantRuleViolation,
)
from workers.vendors.kompliant.models import CreatedWorkflow, Workflow, WorkflowState, WorkflowType

__all__ = [
    "CreatedWorkflow",
    "KompliantAuthError",
    "KompliantBadRequest",
    "KompliantClient",
    "KompliantConfigurationViolation",
    "KompliantError",
    "KompliantNotFound",
    "KompliantRetryableError",
    "KompliantRuleViolation",
    "Workflow",
    "WorkflowState",
    "WorkflowType",
    "business_application_details",
    "get_kompliant_client",
]
