"""Typed views of Kompliant ``data`` payloads (unknown fields ignored, enums kept as strings, P3)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WorkflowType(StrEnum):
    BUSINESS_APPLICATION = "BUSINESS_APPLICATION"
    BUSINESS_UNDERWRITING = "BUSINESS_UNDERWRITING"
    ACCOUNT_PROVISIONING = "ACCOUNT_PROVISIONING"


class WorkflowState(StrEnum):
    CREATED = "CREATED"
    STARTED = "STARTED"
    ENDED = "ENDED"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreatedWorkflow(_Model):
    workflow_id: str
    subject_record_id: str


class Workflow(_Model):
    workflow_id: str
    type: str | None = None
    subject_record_id: str | None = None
    state: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def business_application(self) -> dict[str, Any]:
        value = self.details.get("business_application_details")
        return value if isinstance(value, dict) else {}

    @property
    def referrer_value(self) -> str | None:
        value = self.business_application.get("referrer_value")
        return value if isinstance(value, str) else None

    @property
    def applying_user_email(self) -> str | None:
        user = self.business_application.get("applying_user")
        value = user.get("email") if isinstance(user, dict) else None
        return value if isinstance(value, str) else None
