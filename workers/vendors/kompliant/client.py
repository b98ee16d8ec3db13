"""Sync client for the Kompliant RPC API: every method is ``POST /<object>.<verb>`` with a JSON body,
signed with KSig1 (``workers.vendors.kompliant.signing``) and answered with a ``{meta, data}`` /
``{meta, errors}`` envelope. No retries here: failures are classified and raised
(``VendorError.retryable``)."""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Mapping
from typing import Any

import httpx

from workers.core.errors import (
    KompliantAuthError,
    KompliantError,
    KompliantRetryableError,
)
from workers.core.log import get_logger
from workers.core.metrics import observe_vendor_call
from workers.core.settings import Settings, env_name
from workers.vendors.http import (
    DEFAULT_MAX_CONNECTIONS,
    SharedClients,
    parse_retry_after,
    pool_options,
    vendor_http_client,
)
from workers.vendors.kompliant.errors import ERROR_CLASSES
from workers.vendors.kompliant.models import CreatedWorkflow, Workflow, WorkflowType
from workers.vendors.kompliant.signing import KSig1Signer

log = get_logger(__name__)

REFERRER_MAX = 100


class KompliantClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        secret_key: str,
        auth_token: str,
        account_id: str,
        signed_elements: str = "API-Key",
        api_version: str = "2025-03-24",
        api_version_header: str = "X-API-Version",
        timeout: httpx.Timeout | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.BaseTransport | None = None,
        event_hooks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self._signer = KSig1Signer(api_key, secret_key, auth_token, signed_elements=signed_elements)
        headers = {"accept": "application/json", "content-type": "application/json"}
        if api_version_header and api_version:
            headers[api_version_header] = api_version
        self._http = vendor_http_client(
            self.base_url,
            headers,
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
            event_hooks=event_hooks,
            vendor="kompliant",
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> KompliantClient:
        missing = [
            name
            for name in ("kompliant_api_key", "kompliant_secret_key", "kompliant_auth_token")
            if getattr(settings, name) is None
        ]
        if missing:
            raise ValueError("not set: " + ", ".join(env_name(m) for m in missing))
        assert settings.kompliant_api_key and settings.kompliant_secret_key and settings.kompliant_auth_token
        options: dict[str, Any] = {
            "api_key": settings.kompliant_api_key.get_secret_value(),
            "secret_key": settings.kompliant_secret_key.get_secret_value(),
            "auth_token": settings.kompliant_auth_token.get_secret_value(),
            "account_id": settings.kompliant_account_id,
            "signed_elements": settings.kompliant_signed_elements,
            "api_version": settings.kompliant_api_version,
            "api_version_header": settings.kompliant_api_version_header,
            **pool_options(settings),
        }
        options.update(kwargs)
        return cls(settings.kompliant_base_url, **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KompliantClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- methods -----------------------------------------------------------------------------

    def create_subject_record(self, type: str = "BUSINESS") -> str:
        data = self.call(
            "subjectRecord.create", {"account_id": self.account_id, "subject_record": {"type": type}}
        )
        return str(data["subject_record"]["subject_record_id"])

    def create_workflow(
        self,
        type: str,
        *,
        state: str | None = None,
        subject_record_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> CreatedWorkflow:
        """``workflow.create``; Kompliant creates a subject record when none is given."""
        if state is not None and state not in ("CREATED", "STARTED"):
            raise ValueError("state must be CREATED or STARTED")
        workflow: dict[str, Any] = {"type": type}
        if state is not None:
            workflow["state"] = state
        if subject_record_id:
            workflow["subject_record_id"] = subject_record_id
        if details is not None:
            workflow["details"] = dict(details)
        data = self.call("workflow.create", {"account_id": self.account_id, "workflow": workflow})
        return CreatedWorkflow.model_validate(data["workflow"])

    def create_business_application(
        self,
        *,
        email: str,
        first_name: str | None = None,
        last_name: str | None = None,
        referrer_value: str | None = None,
        subject_record_id: str | None = None,
        state: str = "CREATED",
        pricing_model_id: str | None = None,
        equipment_collection_id: str | None = None,
    ) -> CreatedWorkflow:
        details = business_application_details(
            email=email,
            first_name=first_name,
            last_name=last_name,
            referrer_value=referrer_value,
            pricing_model_id=pricing_model_id,
            equipment_collection_id=equipment_collection_id,
        )
        return self.create_workflow(
            WorkflowType.BUSINESS_APPLICATION,
            state=state,
            subject_record_id=subject_record_id,
            details=details,
        )

    def create_account_provisioning(
        self, *, subject_record_id: str | None = None, state: str | None = None
    ) -> CreatedWorkflow:
        return self.create_workflow(
            WorkflowType.ACCOUNT_PROVISIONING, state=state, subject_record_id=subject_record_id
        )

    def update_workflow(self, workflow_id: str, details: Mapping[str, Any]) -> None:
        """``workflow.update``: only a CREATED BUSINESS_APPLICATION accepts it.

        ``details`` is the Workflow details object (``{"business_application_details": {...}}``); the inner
        object alone (``{"applying_user": ..., "referrer_value": ...}``) is wrapped for you.
        """
        body = dict(details)
        if "business_application_details" not in body:
            body = {"business_application_details": body}
        inner = body["business_application_details"]
        referrer = inner.get("referrer_value") if isinstance(inner, Mapping) else None
        if isinstance(referrer, str) and len(referrer) > REFERRER_MAX:
            raise ValueError(f"referrer_value is limited to {REFERRER_MAX} characters")
        self.call("workflow.update", {"workflow_id": workflow_id, "workflow": {"details": body}})

    def start_workflow(self, workflow_id: str) -> None:
        """CREATED -> STARTED; ``WORKFLOW_STARTED`` / ``WORKFLOW_ENDED`` rule violations otherwise."""
        self.call("workflow.start", {"workflow_id": workflow_id})

    def get_workflow(self, workflow_id: str) -> Workflow:
        data = self.call("workflow.get", {"workflow_id": workflow_id})
        return Workflow.model_validate(data["workflow"])

    def list_workflows(self, subject_record_id: str) -> list[Workflow]:
        data = self.call("workflow.list", {"subject_record_id": subject_record_id})
        return [Workflow.model_validate(w) for w in data.get("workflows") or []]

    # --- plumbing ----------------------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST one RPC method; returns ``data`` or raises a ``KompliantError``."""
        body = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = self._signer.headers("POST", body)
        started = time.monotonic()
        try:
            response = self._http.post(f"/{method}", content=body, headers=headers)
        except httpx.TimeoutException as exc:
            observe_vendor_call("kompliant", method, "timeout", time.monotonic() - started)
            log.warning("kompliant.timeout", method=method, error=type(exc).__name__)
            raise KompliantRetryableError(
                f"Kompliant {method} timed out ({type(exc).__name__})", method=method, retryable=True
            ) from exc
        except httpx.TransportError as exc:
            observe_vendor_call("kompliant", method, "transport_error", time.monotonic() - started)
            log.warning("kompliant.transport_error", method=method, error=type(exc).__name__)
            raise KompliantRetryableError(
                f"Kompliant {method} failed to connect ({type(exc).__name__})", method=method, retryable=True
            ) from exc
        elapsed = time.monotonic() - started
        observe_vendor_call("kompliant", method, response.status_code, elapsed)
        elapsed_ms = round(elapsed * 1000, 1)
        envelope = _envelope(response)
        meta = envelope.get("meta") if isinstance(envelope.get("meta"), dict) else {}
        trace_id = meta.get("trace_id") if isinstance(meta, dict) else None
        if response.is_success and isinstance(meta, dict) and meta.get("status", "SUCCESS") == "SUCCESS":
            data = envelope.get("data")
            if isinstance(data, dict):
                log.debug("kompliant.ok", method=method, trace_id=trace_id, elapsed_ms=elapsed_ms)
                return data
        error = _classify(method, response, envelope, trace_id)
        log.warning(
            "kompliant.error",
            method=method,
            status=response.status_code,
            code=error.code,
            sub_code=error.sub_code,
            entity_type=error.entity_type,
            trace_id=trace_id,
            retryable=error.retryable,
            elapsed_ms=elapsed_ms,
        )
        raise error


def business_application_details(
    *,
    email: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    referrer_value: str | None = None,
    pricing_model_id: str | None = None,
    equipment_collection_id: str | None = None,
) -> dict[str, Any]:
    """``details`` for a BUSINESS_APPLICATION (create needs ``email``; update takes any subset)."""
    if referrer_value is not None and len(referrer_value) > REFERRER_MAX:
        raise ValueError(f"referrer_value is limited to {REFERRER_MAX} characters")
    user = {k: v for k, v in (("email", email), ("first_name", first_name), ("last_name", last_name)) if v}
    inner: dict[str, Any] = {}
    if user:
        inner["applying_user"] = user
    for key, value in (
        ("referrer_value", referrer_value),
        ("pricing_model_id", pricing_model_id),
        ("equipment_collection_id", equipment_collection_id),
    ):
        if value is not None:
            inner[key] = value
    return {"business_application_details": inner}


def _envelope(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _classify(
    method: str, response: httpx.Response, envelope: dict[str, Any], trace_id: Any
) -> KompliantError:
    status = response.status_code
    raw_errors = envelope.get("errors")
    errors = [e for e in raw_errors if isinstance(e, dict)] if isinstance(raw_errors, list) else []
    first = errors[0] if errors else {}
    code = str(first["code"]) if first.get("code") else None
    text = str(first.get("message") or "")[:200]
    message = (
        f"Kompliant {method} answered {status}" + (f" {code}" if code else "") + (f": {text}" if text else "")
    )
    common: dict[str, Any] = {
        "method": method,
        "code": code,
        "sub_code": first.get("sub_code"),
        "entity_type": first.get("entity_type"),
        "trace_id": str(trace_id) if trace_id else None,
        "errors": errors,
        "status_code": status,
    }
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return KompliantRetryableError(message, retryable=True, retry_after=retry_after, **common)
    if status in (401, 403):
        return KompliantAuthError(message, **common)
    if code in ERROR_CLASSES:
        return ERROR_CLASSES[code](message, **common)
    if response.is_success:
        return KompliantError(f"Kompliant {method} answered {status} without a SUCCESS envelope", **common)
    return KompliantError(message, **common)


def _identity(settings: Settings) -> tuple[Hashable, ...]:
    secrets = tuple(
        s.get_secret_value() if s else ""
        for s in (settings.kompliant_api_key, settings.kompliant_secret_key, settings.kompliant_auth_token)
    )
    return (
        settings.kompliant_base_url,
        settings.kompliant_account_id,
        settings.kompliant_signed_elements,
        settings.kompliant_api_version,
        settings.kompliant_api_version_header,
        *secrets,
    )


_clients: SharedClients[KompliantClient] = SharedClients(KompliantClient.from_settings, _identity)


def get_kompliant_client(settings: Settings) -> KompliantClient:
    """The process's shared client for these settings (one connection pool per process, fork-safe)."""
    return _clients.get(settings)
