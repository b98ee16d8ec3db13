"""Fake Kompliant API: ``POST /<object>.<verb>`` RPC with KSig1 verification and the documented envelope.

Implements ``subjectRecord.create``, ``workflow.create``, ``workflow.update``, ``workflow.start``,
``workflow.get`` and ``workflow.list`` with the workflow state rules of the Kompliant docs
(docs/vendor-assumptions.md §2 and the Kompliant guides there), including
``SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT`` and ``DUPLICATE_EMAIL``. ``app.state.fake`` is the inspectable
``FakeKompliantState``; ``GET /_fake/workflows`` lists everything for tests and the demo in other processes.
Run it as a process with ``python -m workers.sandbox.fakes.kompliant --port N``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.sandbox.fakes.common import fake_app, serve_main
from workers.sandbox.fakes.faults import Faults
from workers.vendors.kompliant.signing import verify

VERSION = "2025-03-24"
CREATABLE_TYPES = ("BUSINESS_APPLICATION", "ACCOUNT_PROVISIONING")
WORKFLOW_TYPES = (*CREATABLE_TYPES, "BUSINESS_UNDERWRITING")
SUBJECT_RECORD_TYPES = ("BUSINESS", "PERSON")
REFERRER_MAX = 100
# Defaults: the public test-vector key pair of the Kompliant quick-start guide; never real credentials.
DEFAULT_API_KEY = "sb_3eY9UJuj09636NVPlgmhfa"
DEFAULT_SECRET_KEY = "xBeain5pFnPyQkl98qzA+BG+Cjzskpqq9fGKDbDoXNP5"  # noqa: S105
DEFAULT_AUTH_TOKEN = "fake-auth-token"  # noqa: S105
DEFAULT_ACCOUNT_ID = "sb_fakeaccount"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _kid(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(22))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KompliantFault(Exception):
    """An error answer: HTTP status and one error object."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        entity_type: str | None = None,
        sub_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"code": code, "message": message}
        if entity_type:
            self.error["entity_type"] = entity_type
        if sub_code:
            self.error["sub_code"] = sub_code


def _bad(message: str) -> KompliantFault:
    return KompliantFault("BAD_REQUEST", message)


def _rule(sub_code: str, message: str, entity_type: str = "WORKFLOW") -> KompliantFault:
    return KompliantFault("SYSTEM_RULE_VIOLATION", message, entity_type=entity_type, sub_code=sub_code)


class FakeKompliantState:
    """In-memory Kompliant account (``app.state.fake``)."""

    def __init__(self, *, account_id: str, allow_duplicate_emails: bool, faults: Faults) -> None:
        self.account_id = account_id
        self.allow_duplicate_emails = allow_duplicate_emails
        self.faults = faults
        self.lock = threading.RLock()
        self.subject_records: dict[str, dict[str, Any]] = {}
        self.workflows: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, int, str | None]] = []  # (method, status, error code)

    # --- inspection --------------------------------------------------------------------------

    def business_applications(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(w) for w in self.workflows.values() if w["type"] == "BUSINESS_APPLICATION"]

    def business_applications_by_referrer(self) -> Counter[str]:
        """How many BUSINESS_APPLICATION workflows carry each ``referrer_value`` (tests: exactly one)."""
        counts: Counter[str] = Counter()
        for workflow in self.business_applications():
            referrer = workflow["details"].get("business_application_details", {}).get("referrer_value")
            if referrer is not None:
                counts[referrer] += 1
        return counts

    def end_workflow(self, workflow_id: str) -> None:
        """Simulate the applicant completing the application (STARTED -> ENDED)."""
        with self.lock:
            workflow = self.workflows[workflow_id]
            workflow["state"] = "ENDED"
            workflow["ended_at"] = workflow["updated_at"] = _now()

    def reset(self) -> None:
        with self.lock:
            self.subject_records.clear()
            self.workflows.clear()
            self.requests.clear()
        self.faults.reset()

    # --- methods -----------------------------------------------------------------------------

    def _account(self, params: dict[str, Any]) -> None:
        account = params.get("account_id")
        if not isinstance(account, str) or not account:
            raise _bad("account_id is required")
        if account != self.account_id:
            raise KompliantFault("ENTITY_NOT_FOUND", "account_id does not exist")

    def _new_subject_record(self, type_: str) -> str:
        record_id = _kid("sr_")
        self.subject_records[record_id] = {
            "subject_record_id": record_id,
            "type": type_,
            "account_id": self.account_id,
            "created_at": _now(),
        }
        return record_id

    def subject_record_create(self, params: dict[str, Any]) -> dict[str, Any]:
        self._account(params)
        record = params.get("subject_record")
        if not isinstance(record, dict):
            raise _bad("subject_record is required")
        type_ = record.get("type")
        if type_ not in SUBJECT_RECORD_TYPES:
            raise _bad(f"subject_record.type must be one of {', '.join(SUBJECT_RECORD_TYPES)}")
        return {"subject_record": {"subject_record_id": self._new_subject_record(type_)}}

    def _check_details(self, details: Any, *, creating: bool) -> dict[str, Any]:
        if not isinstance(details, dict) or not isinstance(details.get("business_application_details"), dict):
            raise _bad("details.business_application_details is required")
        inner: dict[str, Any] = details["business_application_details"]
        user = inner.get("applying_user")
        if creating and not isinstance(user, dict):
            raise _bad("details.business_application_details.applying_user is required")
        if user is not None:
            if not isinstance(user, dict):
                raise _bad("applying_user must be an object")
            email = user.get("email")
            if creating and not email:
                raise _bad("applying_user.email is required")
            if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
                raise _bad("applying_user.email must be a validly formatted email address")
        referrer = inner.get("referrer_value")
        if referrer is not None and (not isinstance(referrer, str) or len(referrer) > REFERRER_MAX):
            raise _bad(f"referrer_value is limited to {REFERRER_MAX} characters")
        return inner

    def _check_email_unique(self, email: str | None, exclude: str | None = None) -> None:
        if email is None or self.allow_duplicate_emails:
            return
        for workflow in self.workflows.values():
            if workflow["type"] != "BUSINESS_APPLICATION" or workflow["workflow_id"] == exclude:
                continue
            other = workflow["details"]["business_application_details"].get("applying_user", {}).get("email")
            if isinstance(other, str) and other.lower() == email.lower():
                raise KompliantFault(
                    "ACCOUNT_CONFIGURATION_VIOLATION",
                    "The email address is already in use by another Business Application",
                    entity_type="WORKFLOW",
                    sub_code="DUPLICATE_EMAIL",
                )

    def workflow_create(self, params: dict[str, Any]) -> dict[str, Any]:
        self._account(params)
        spec = params.get("workflow")
        if not isinstance(spec, dict):
            raise _bad("workflow is required")
        type_ = spec.get("type")
        if type_ not in WORKFLOW_TYPES:
            raise _bad(f"workflow.type must be one of {', '.join(WORKFLOW_TYPES)}")
        if type_ not in CREATABLE_TYPES:
            raise _rule("INVALID_WORKFLOW_TYPE", f"{type_} workflows are created by the system")
        state = spec.get("state", "STARTED")
        if state not in ("CREATED", "STARTED"):
            raise _bad("workflow.state must be CREATED or STARTED")
        is_application = type_ == "BUSINESS_APPLICATION"
        if is_application:
            inner = self._check_details(spec.get("details"), creating=True)
        elif spec.get("details") is not None:
            raise _bad(f"details must not be included for {type_}")
        record_id = spec.get("subject_record_id")
        if record_id is not None:
            record = self.subject_records.get(record_id) if isinstance(record_id, str) else None
            if record is None:
                raise KompliantFault("ENTITY_NOT_FOUND", "subject_record_id does not exist")
            if is_application and record["type"] != "BUSINESS":
                raise _rule(
                    "INVALID_SUBJECT_RECORD_TYPE", "a Business Application needs a BUSINESS subject record"
                )
            if is_application and any(
                w["subject_record_id"] == record_id and w["type"] == type_ for w in self.workflows.values()
            ):
                raise _rule(
                    "SUBJECT_RECORD_WORKFLOW_TYPE_LIMIT",
                    "The Subject Record cannot be associated with multiple workflows of the same type",
                )
        if is_application:
            self._check_email_unique(inner.get("applying_user", {}).get("email"))
        if record_id is None:
            record_id = self._new_subject_record("BUSINESS")
        now = _now()
        workflow_id = _kid("w_")
        self.workflows[workflow_id] = {
            "workflow_id": workflow_id,
            "type": type_,
            "subject_record_id": record_id,
            "state": state,
            "details": copy.deepcopy(spec.get("details") or {}),
            "started_at": now if state == "STARTED" else None,
            "ended_at": None,
            "created_at": now,
            "updated_at": now,
        }
        return {"workflow": {"workflow_id": workflow_id, "subject_record_id": record_id}}

    def _workflow(self, params: dict[str, Any]) -> dict[str, Any]:
        workflow_id = params.get("workflow_id")
        if not isinstance(workflow_id, str) or not workflow_id:
            raise _bad("workflow_id is required")
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise KompliantFault("ENTITY_NOT_FOUND", "workflow_id does not exist")
        return workflow

    def workflow_update(self, params: dict[str, Any]) -> dict[str, Any]:
        workflow = self._workflow(params)
        spec = params.get("workflow")
        if not isinstance(spec, dict):
            raise _bad("workflow is required")
        if workflow["type"] != "BUSINESS_APPLICATION":
            raise _rule("INVALID_WORKFLOW_TYPE", "only Business Application workflows can be updated")
        if workflow["state"] == "STARTED":
            raise _rule("WORKFLOW_STARTED", "the workflow has already started")
        if workflow["state"] == "ENDED":
            raise _rule("WORKFLOW_ENDED", "the workflow has ended")
        inner = self._check_details(spec.get("details"), creating=False)
        if isinstance(inner.get("applying_user"), dict):
            self._check_email_unique(inner["applying_user"].get("email"), exclude=workflow["workflow_id"])
        current = workflow["details"].setdefault("business_application_details", {})
        for key, value in inner.items():
            if key == "applying_user" and isinstance(value, dict):
                current.setdefault("applying_user", {}).update(value)
            else:
                current[key] = value
        workflow["updated_at"] = _now()
        return {}

    def workflow_start(self, params: dict[str, Any]) -> dict[str, Any]:
        workflow = self._workflow(params)
        if workflow["state"] == "STARTED":
            raise _rule("WORKFLOW_STARTED", "the workflow has already started")
        if workflow["state"] == "ENDED":
            raise _rule("WORKFLOW_ENDED", "the workflow has ended")
        workflow["state"] = "STARTED"
        workflow["started_at"] = workflow["updated_at"] = _now()
        return {}

    def workflow_get(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"workflow": copy.deepcopy(self._workflow(params))}

    def workflow_list(self, params: dict[str, Any]) -> dict[str, Any]:
        record_id = params.get("subject_record_id")
        if not isinstance(record_id, str) or not record_id:
            raise _bad("subject_record_id is required")
        if record_id not in self.subject_records:
            raise KompliantFault("ENTITY_NOT_FOUND", "subject_record_id does not exist")
        found = [copy.deepcopy(w) for w in self.workflows.values() if w["subject_record_id"] == record_id]
        return {"workflows": found}


def _meta(status: str) -> dict[str, Any]:
    return {"status": status, "trace_id": _kid("trc_"), "version": VERSION}


def _error_response(fault: KompliantFault) -> Response:
    return JSONResponse({"meta": _meta("ERROR"), "errors": [fault.error]}, status_code=fault.status)


def _fault_body(status: int) -> bytes:
    code = "RATE_LIMIT_EXCEEDED" if status == 429 else "SERVICE_UNAVAILABLE"
    return json.dumps(
        {"meta": _meta("ERROR"), "errors": [{"code": code, "message": "injected fault"}]}
    ).encode()


def create_app(
    api_key: str = DEFAULT_API_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    auth_token: str = DEFAULT_AUTH_TOKEN,
    account_id: str = DEFAULT_ACCOUNT_ID,
    *,
    allow_duplicate_emails: bool = False,
    faults: Faults | None = None,
) -> Starlette:
    faults = faults or Faults()
    state = FakeKompliantState(
        account_id=account_id, allow_duplicate_emails=allow_duplicate_emails, faults=faults
    )
    methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "subjectRecord.create": state.subject_record_create,
        "workflow.create": state.workflow_create,
        "workflow.update": state.workflow_update,
        "workflow.start": state.workflow_start,
        "workflow.get": state.workflow_get,
        "workflow.list": state.workflow_list,
    }

    def answer(method: str, response: Response, code: str | None = None) -> Response:
        with state.lock:
            state.requests.append((method, response.status_code, code))
        return response

    async def rpc(request: Request) -> Response:
        method = request.path_params["method"]
        body = await request.body()
        problem = verify(
            request.headers,
            request.method,
            body,
            api_key=api_key,
            secret_key=secret_key,
            auth_token=auth_token,
        )
        if problem is not None:
            fault = KompliantFault("UNAUTHORIZED", problem, status=401)
            return answer(method, _error_response(fault), "UNAUTHORIZED")
        handler = methods.get(method)
        if handler is None:
            fault = KompliantFault("BAD_REQUEST", f"unknown method {method}", status=404)
            return answer(method, _error_response(fault), "BAD_REQUEST")
        try:
            params = json.loads(body) if body.strip() else None
        except ValueError:
            params = None
        if not isinstance(params, dict):
            return answer(method, _error_response(_bad("body must be a JSON object")), "BAD_REQUEST")
        try:
            with state.lock:
                data = handler(params)
        except KompliantFault as fault:
            return answer(method, _error_response(fault), fault.error["code"])
        return answer(method, JSONResponse({"meta": _meta("SUCCESS"), "data": data}))

    async def fake_workflows(request: Request) -> Response:
        with state.lock:
            return JSONResponse(
                {
                    "workflows": list(state.workflows.values()),
                    "subject_records": list(state.subject_records.values()),
                    "business_applications_by_referrer": dict(state.business_applications_by_referrer()),
                }
            )

    async def fake_end(request: Request) -> Response:
        try:
            state.end_workflow(request.path_params["id"])
        except KeyError:
            return JSONResponse({"error": "not_found", "detail": "no such workflow"}, status_code=404)
        return JSONResponse({"ended": True})

    async def fake_config(request: Request) -> Response:
        try:
            changes = await request.json()
        except ValueError:
            return JSONResponse({"error": "bad_json", "detail": "body must be JSON"}, status_code=400)
        value = changes.get("allow_duplicate_emails") if isinstance(changes, dict) else None
        if not isinstance(value, bool):
            return JSONResponse(
                {"error": "invalid", "detail": "allow_duplicate_emails (bool) is required"}, status_code=422
            )
        state.allow_duplicate_emails = value
        return JSONResponse({"allow_duplicate_emails": value})

    return fake_app(
        state,
        faults,
        control_routes=[
            Route("/_fake/workflows", fake_workflows, methods=["GET"]),
            Route("/_fake/workflows/{id}/end", fake_end, methods=["POST"]),
            Route("/_fake/config", fake_config, methods=["POST"]),
        ],
        api_routes=[Route("/{method}", rpc, methods=["POST"])],
        error_body=_fault_body,
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="API key the fake accepts")
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY, help="KSig1 signing secret")
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN, help="bearer token the fake accepts")
    parser.add_argument("--account-id", default=DEFAULT_ACCOUNT_ID, help="account id in signed requests")
    parser.add_argument(
        "--allow-duplicate-emails", action="store_true", help="accept a second application per e-mail"
    )


def _build(args: argparse.Namespace, faults: Faults) -> Starlette:
    return create_app(
        args.api_key,
        args.secret_key,
        args.auth_token,
        args.account_id,
        allow_duplicate_emails=args.allow_duplicate_emails,
        faults=faults,
    )


def main(argv: list[str] | None = None, prog: str = "python -m workers.sandbox.fakes.kompliant") -> None:
    """``python -m workers.sandbox.fakes.kompliant --port 8102 --api-key ... --secret-key ...``"""
    serve_main(
        argv,
        prog=prog,
        description="Fake Kompliant API",
        port=8102,
        add_arguments=_arguments,
        build=_build,
    )


if __name__ == "__main__":
    main()
