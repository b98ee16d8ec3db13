"""Sync client for the Kiban workfloo API (``kiban-workfloo.openapi.yaml``).

One pooled ``httpx.Client`` per client (``workers.vendors.http``); ``get_kiban_client(settings)`` caches one
client per process.
No retries here: every failure is classified into ``workers.core.errors`` and raised; the RQ job
layer decides whether to try again (``VendorError.retryable`` / ``retry_after``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from workers.core.errors import (
    ErrorBody,
    KibanAuthError,
    KibanConflictError,
    KibanError,
    KibanNipAlreadySentError,
    KibanNotFoundError,
    KibanRetryableError,
    KibanValidationError,
)
from workers.core.log import get_logger
from workers.core.metrics import observe_vendor_call
from workers.core.settings import Settings
from workers.vendors.http import (
    DEFAULT_MAX_CONNECTIONS,
    SharedClients,
    parse_retry_after,
    pool_options,
    vendor_http_client,
)
from workers.vendors.kiban.errors import parse_error_body
from workers.vendors.kiban.models import (
    ExecuteResult,
    NipPhase,
    NipResendStatus,
    WorkflooDetail,
    WorkflooStatus,
)

log = get_logger(__name__)

API = "/api/v1/workfloo"


class KibanClient:
    """Every workfloo operation the bridge needs. Methods take the execution id first."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        sandbox: bool = True,
        sandbox_host: str = "sandbox.workfloo.kiban.com",
        default_scenario_id: str = "",
        timeout: httpx.Timeout | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        nip_sent_markers: Sequence[str] = ("previously sent", "already sent", "NIP_ALREADY_SENT"),
        nip_send_bare_400_is_sent: bool = True,
        transport: httpx.BaseTransport | None = None,
        event_hooks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.sandbox = sandbox
        host = urlsplit(self.base_url).hostname or ""
        # The sandbox host is sandbox implicitly and ignores the flag; elsewhere it must be asked for.
        self._sandbox_query = sandbox and host != sandbox_host
        self.default_scenario_id = default_scenario_id
        self._nip_markers = [m.lower() for m in nip_sent_markers if m]
        self._bare_400_is_sent = nip_send_bare_400_is_sent
        self._http = vendor_http_client(
            self.base_url,
            {"x-api-key": api_key, "accept": "application/json"},
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
            event_hooks=event_hooks,
            vendor="kiban",
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> KibanClient:
        if settings.kiban_api_key is None:
            raise ValueError("BRIDGE_KIBAN_API_KEY is not set")
        options: dict[str, Any] = {
            "sandbox": settings.kiban_sandbox,
            "sandbox_host": settings.kiban_sandbox_host,
            "default_scenario_id": settings.kiban_scenario_id,
            **pool_options(settings),
            "nip_sent_markers": settings.kiban_nip_sent_markers,
            "nip_send_bare_400_is_sent": settings.kiban_nip_send_bare_400_is_sent,
        }
        options.update(kwargs)
        return cls(settings.kiban_base_url, settings.kiban_api_key.get_secret_value(), **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KibanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations --------------------------------------------------------------------------

    def execute(
        self,
        definition_id: str,
        *,
        scenario_id: str | None = None,
        callback_url: str | None = None,
        callback_api_key: str | None = None,
        form: Mapping[str, Any] | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> str:
        """Start an execution; returns its id. In sandbox a ``scenarioId`` is required."""
        if not definition_id:
            raise ValueError("definition_id (idWorkflooDefinition) is required")
        scenario = scenario_id if scenario_id is not None else self.default_scenario_id
        if self.sandbox and not scenario:
            raise ValueError(
                "scenario_id is required in sandbox (set BRIDGE_KIBAN_SCENARIO_ID or pass scenario_id)"
            )
        body: dict[str, Any] = {"idWorkflooDefinition": definition_id}
        if scenario:
            body["scenarioId"] = scenario
        if callback_url:
            body["callbackUrl"] = callback_url
        if callback_api_key:
            body["callbackXApiKey"] = callback_api_key
        if form:
            body["form"] = dict(form)
        if document:
            body["document"] = dict(document)
        response = self._call("executeWorkfloo", "POST", API, json=body)
        return ExecuteResult.model_validate(self._json(response, "executeWorkfloo")).id

    def submit_form(self, execution_id: str, fields: Mapping[str, Any]) -> None:
        """Answer the current FORM node (``{fieldId: value}``); 200 has no body."""
        self._call("executeWorkflooForm", "POST", f"{API}/{_id(execution_id)}/form", json=dict(fields))

    def submit_document(self, execution_id: str, documents: Mapping[str, Any]) -> None:
        """Upload the current DOCUMENT node's files (``{documentId: base64}``)."""
        self._call(
            "executeWorkflooDocument", "POST", f"{API}/{_id(execution_id)}/document", json=dict(documents)
        )

    def send_nip(
        self,
        execution_id: str,
        *,
        url_callback: str | None = None,
        api_key_callback: str | None = None,
        country_code: str | None = None,
        phone_number: str | None = None,
    ) -> None:
        """Send the NIP. ``KibanNipAlreadySentError`` when Kiban says it was sent before (jobs: success)."""
        self._nip_delivery(
            "sendWorkflooNip",
            f"{API}/{_id(execution_id)}/nip/send",
            url_callback=url_callback,
            api_key_callback=api_key_callback,
            country_code=country_code,
            phone_number=phone_number,
        )

    def resend_nip(
        self,
        execution_id: str,
        *,
        url_callback: str | None = None,
        api_key_callback: str | None = None,
        country_code: str | None = None,
        phone_number: str | None = None,
    ) -> NipResendStatus:
        """Send the NIP again (same options as ``send_nip``); returns the phase and where it went."""
        response = self._nip_delivery(
            "resendWorkflooNip",
            f"{API}/{_id(execution_id)}/nip/resend",
            url_callback=url_callback,
            api_key_callback=api_key_callback,
            country_code=country_code,
            phone_number=phone_number,
        )
        return NipResendStatus.model_validate(self._json(response, "resendWorkflooNip"))

    def _nip_delivery(
        self,
        operation: str,
        path: str,
        *,
        url_callback: str | None,
        api_key_callback: str | None,
        country_code: str | None,
        phone_number: str | None,
    ) -> httpx.Response:
        """``PATCH nip/send`` and ``nip/resend`` take the same callback headers and optional phone body."""
        headers: dict[str, str] = {}
        if url_callback:
            headers["urlCallback"] = url_callback
        if api_key_callback:
            headers["xApiKeyCallback"] = api_key_callback
        body = _phone_body(country_code, phone_number)
        return self._call(operation, "PATCH", path, json=body, headers=headers)

    def validate_nip(self, execution_id: str, nip: str) -> str:
        """One nip/validate call; returns the resulting phase (``VALIDATE_2`` then ``VALIDATED``)."""
        response = self._call(
            "validateWorkflooNip", "PATCH", f"{API}/{_id(execution_id)}/nip/validate", json={"nip": nip}
        )
        phase = self._json(response, "validateWorkflooNip").get("phase")
        return phase if isinstance(phase, str) else ""

    def validate_nip_twice(self, execution_id: str, nip: str) -> str:
        """The guide's two-step dance: validate, and again while the phase is ``VALIDATE_2``."""
        phase = self.validate_nip(execution_id, nip)
        if phase == NipPhase.VALIDATE_2:
            phase = self.validate_nip(execution_id, nip)
        return phase

    def validate_otp(self, execution_id: str, token: str) -> None:
        """Third-party verification code; a wrong code is ``KibanValidationError.remaining_retries``."""
        self._call(
            "validateWorkflooOtp", "PATCH", f"{API}/{_id(execution_id)}/otp/validate", json={"token": token}
        )

    def otp_fallback(self, execution_id: str) -> None:
        """Ask the provider for a new code (each call is billed; the node limits them)."""
        self._call("fallbackWorkflooOtp", "PATCH", f"{API}/{_id(execution_id)}/otp/fallback")

    def review(
        self,
        execution_id: str,
        decision: str,
        *,
        reviewer_note: str | None = None,
        reviews: Iterable[Mapping[str, str]] = (),
    ) -> None:
        """Reviewer decision on a VALIDATION node in REVIEW (decision values UNCONFIRMED)."""
        body: dict[str, Any] = {"decision": decision}
        if reviewer_note is not None:
            body["reviewerNote"] = reviewer_note
        review_list = [dict(r) for r in reviews]
        if review_list:
            body["reviews"] = review_list
        self._call("reviewWorkflooValidation", "POST", f"{API}/{_id(execution_id)}/review", json=body)

    def submit_correction(self, execution_id: str, fields: Mapping[str, Any]) -> None:
        self._call(
            "submitWorkflooCorrection", "POST", f"{API}/{_id(execution_id)}/correction", json=dict(fields)
        )

    def get_file(self, execution_id: str, node_id: str, name: str) -> str:
        """Base64 of a file produced or uploaded in a node."""
        response = self._call(
            "getWorkflooFile",
            "GET",
            f"{API}/{_id(execution_id)}/file",
            params={"nodeId": node_id, "name": name},
        )
        value = self._json(response, "getWorkflooFile").get("fileBase64")
        return value if isinstance(value, str) else ""

    def get_status(self, execution_id: str) -> WorkflooStatus:
        response = self._call("getWorkflooStatus", "GET", f"{API}/status/{_id(execution_id)}")
        return WorkflooStatus.model_validate(self._json(response, "getWorkflooStatus"))

    def get_detail(self, execution_id: str) -> WorkflooDetail:
        response = self._call("getWorkfloo", "GET", f"{API}/{_id(execution_id)}")
        return WorkflooDetail.model_validate(self._json(response, "getWorkfloo"))

    # --- plumbing ----------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        query: dict[str, str] = dict(params or {})
        if self._sandbox_query:
            query["sandbox"] = "true"
        started = time.monotonic()
        try:
            response = self._http.request(
                method, path, json=json, headers=dict(headers or {}), params=query or None
            )
        except httpx.TimeoutException as exc:
            observe_vendor_call("kiban", operation, "timeout", time.monotonic() - started)
            log.warning("kiban.timeout", operation=operation, error=type(exc).__name__)
            raise KibanRetryableError(
                f"Kiban {operation} timed out ({type(exc).__name__})", operation=operation
            ) from exc
        except httpx.TransportError as exc:
            observe_vendor_call("kiban", operation, "transport_error", time.monotonic() - started)
            log.warning("kiban.transport_error", operation=operation, error=type(exc).__name__)
            raise KibanRetryableError(
                f"Kiban {operation} failed to connect ({type(exc).__name__})", operation=operation
            ) from exc
        elapsed = time.monotonic() - started
        observe_vendor_call("kiban", operation, response.status_code, elapsed)
        elapsed_ms = round(elapsed * 1000, 1)
        if response.is_success:
            log.debug("kiban.ok", operation=operation, status=response.status_code, elapsed_ms=elapsed_ms)
            return response
        error = self._classify(operation, response)
        log.warning(
            "kiban.error",
            operation=operation,
            status=response.status_code,
            error_class=type(error).__name__,
            type_error=error.type_error,
            retryable=error.retryable,
            retry_after=error.retry_after,
            elapsed_ms=elapsed_ms,
        )
        raise error

    def _classify(self, operation: str, response: httpx.Response) -> KibanError:
        status = response.status_code
        body = parse_error_body(response.content)
        detail = _describe(body)
        message = f"Kiban {operation} answered {status}" + (f": {detail}" if detail else "")
        common: dict[str, Any] = {"operation": operation, "status_code": status, "body": body}
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return KibanRetryableError(message, retryable=True, retry_after=retry_after, **common)
        if status in (401, 403):
            return KibanAuthError(message, **common)
        if status == 404:
            return KibanNotFoundError(message, **common)
        if status == 409:
            return KibanConflictError(message, **common)
        if status == 400:
            if operation == "sendWorkflooNip" and self._nip_already_sent(response, body):
                return KibanNipAlreadySentError(message, **common)
            return KibanValidationError(message, **common)
        if status == 408:
            return KibanRetryableError(message, retryable=True, **common)
        return KibanError(message, **common)

    def _nip_already_sent(self, response: httpx.Response, body: ErrorBody) -> bool:
        text = response.content.decode("utf-8", "replace").lower()
        if any(marker in text for marker in self._nip_markers):
            return True
        return self._bare_400_is_sent and not response.content.strip()

    @staticmethod
    def _json(response: httpx.Response, operation: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise KibanError(
                f"Kiban {operation} answered {response.status_code} without JSON",
                operation=operation,
                status_code=response.status_code,
            ) from exc
        if not isinstance(data, dict):
            raise KibanError(
                f"Kiban {operation} answered a non-object JSON body",
                operation=operation,
                status_code=response.status_code,
            )
        return data


def _id(execution_id: str) -> str:
    if not execution_id or "/" in execution_id:
        raise ValueError("execution_id must be a non-empty id without '/'")
    return execution_id


def _phone_body(country_code: str | None, phone_number: str | None) -> dict[str, str] | None:
    if (country_code is None) != (phone_number is None):
        raise ValueError("country_code and phone_number go together (both or neither)")
    if country_code is None or phone_number is None:
        return None
    return {"countryCode": country_code, "phoneNumber": phone_number}


def _describe(body: ErrorBody) -> str:
    """Error summary safe for logs: type, message and field codes, never field values."""
    parts: list[str] = []
    if body.type_error:
        parts.append(body.type_error)
    if body.message:
        parts.append(body.message[:200])
    if body.fields:
        parts.append(", ".join(f"{f.field}={'/'.join(f.codes) or f.message}" for f in body.fields.values()))
    return "; ".join(parts)


def _identity(settings: Settings) -> tuple[Hashable, ...]:
    return (
        settings.kiban_base_url,
        settings.kiban_api_key.get_secret_value() if settings.kiban_api_key else "",
        settings.kiban_sandbox,
        settings.kiban_sandbox_host,
        settings.kiban_scenario_id,
    )


_clients: SharedClients[KibanClient] = SharedClients(KibanClient.from_settings, _identity)


def get_kiban_client(settings: Settings) -> KibanClient:
    """The process's shared client for these settings (one connection pool per process, fork-safe)."""
    return _clients.get(settings)
