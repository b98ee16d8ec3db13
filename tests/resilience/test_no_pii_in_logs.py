"""Secrets and PII: run an application through the bridge's processes with DEBUG logging and check that
no NIP, API key, RFC, phone number or e-mail from the inputs appears in any process's log.

Processes whose output is captured: the receiver (``workfloo-bridge serve``), two workers
(``workfloo-bridge worker``), the fake Kiban and the fake Kompliant (``python -m workers.sandbox.fakes.*``)
and redis-server's own log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.support.resilience_stack import (
    BIN,
    CALLBACK_KEY,
    INTERNAL_KEY,
    KIBAN_KEY,
    Bridge,
    process_stack,
)
from workers.core.settings import load_settings
from workers.jobs import api as commands_api
from workers.runtime import dead_letters
from workers.sandbox.fakes import kompliant as fake_kompliant
from workers.sandbox.wait import wait_until

NIP = "123456"  # the sandbox NIP
WRONG_NIP = "918273"
EMAIL = "maria.lopez.pii@example.com"
EMAIL_2 = "jose.perez.pii@example.org"
EMAIL_3 = "ana.ruiz.pii@example.net"
EMAIL_4 = "luis.diaz.pii@example.com"
PHONE = "5512345678"
RFC = "LOPM800101AB1"
CURP = "LOPM800101MDFPRR09"
SECRETS = {
    "callback key": CALLBACK_KEY,
    "internal key": INTERNAL_KEY,
    "Kiban key": KIBAN_KEY,
    "Kompliant key": fake_kompliant.DEFAULT_API_KEY,
    "Kompliant secret": fake_kompliant.DEFAULT_SECRET_KEY,
    "Kompliant auth token": fake_kompliant.DEFAULT_AUTH_TOKEN,
}
PII = {"e-mail": EMAIL, "e-mail 2": EMAIL_2, "e-mail 3": EMAIL_3, "e-mail 4": EMAIL_4, "phone": PHONE,
       "RFC": RFC, "CURP": CURP, "wrong NIP": WRONG_NIP}  # fmt: skip


def _leaks(lines: list[tuple[str, str]]) -> list[str]:
    patterns = {
        name: re.compile(re.escape(value), re.IGNORECASE) for name, value in {**SECRETS, **PII}.items()
    }
    # A NIP is a bare run of digits: one must not be read inside a longer number or a timestamp's fraction
    # (".918273Z" once made this check fail on a clean log).
    patterns["NIP"] = re.compile(rf"(?<![\d.]){NIP}(?!\d)")
    patterns["wrong NIP"] = re.compile(rf"(?<![\d.]){WRONG_NIP}(?!\d)")
    patterns["phone (spaced)"] = re.compile(r"55[\s.-]?1234[\s.-]?5678")
    found = []
    for process, line in lines:
        for name, pattern in patterns.items():
            if pattern.search(line):
                found.append(f"{process}: {name} in {line[:300]!r}")
    return found


def _abuse_with_pii(receiver_url: str) -> None:
    """Requests the receiver refuses, each carrying personal data or a key where it does not belong."""
    nip_url = f"{receiver_url}/v1/kiban/executions/657118e1d511b6e54fe2a969/nip-events"
    with httpx.Client(timeout=10) as client:
        # A key of another system presented as the callback key.
        assert (
            client.post(
                nip_url, json={"event": "SENT", "date": "x"}, headers={"x-api-key": KIBAN_KEY}
            ).status_code
            == 401
        )
        auth = {"x-api-key": CALLBACK_KEY}
        # Schema errors whose values are personal data.
        bad = {"event": EMAIL, "date": PHONE * 10, "linkId": RFC + "!", "errorMessage": NIP}
        assert client.post(nip_url, json=bad, headers=auth).status_code == 422
        assert (
            client.post(
                f"{receiver_url}/v1/kiban/status", json={"id": f"{RFC}/{NIP}", "status": EMAIL}, headers=auth
            ).status_code
            == 422
        )
        # Invalid JSON around personal data.
        raw = f'{{"event": "SENT", "date": "{EMAIL}", "nip": {NIP}, "rfc": "{RFC}"'.encode()
        response = client.post(nip_url, content=raw, headers=auth | {"content-type": "application/json"})
        assert response.status_code == 400
        # Personal data in the query and the path. (An id-shaped value such as a phone number would be
        # accepted as an execution id and logged as one: ids are not personal data by contract.)
        assert (
            client.post(f"{receiver_url}/v1/kiban/finished?execution_id={EMAIL}", headers=auth).status_code
            == 422
        )
        assert (
            client.post(f"{receiver_url}/v1/kiban/executions/{EMAIL}/finished", headers=auth).status_code
            == 422
        )
        # Accepted callbacks carrying personal data in the body (passed to the worker, never logged).
        status = {
            "id": "657118e1d511b6e54fe2a969",
            "status": "IN_PROGRESS",
            "form": {"email": EMAIL, "rfc_pf": RFC, "curp": CURP, "phone_number": PHONE},
        }
        assert (
            client.post(
                f"{receiver_url}/v1/kiban/status", json=status, headers=auth | {"x-kiban-event-id": "evt_pii"}
            ).status_code
            == 200
        )


def _run_applications(stack: Bridge) -> list[str]:
    """Applications through the bridge's own command API (HTTP on the receiver, and the Python API),
    including a DUPLICATE_EMAIL conflict at Kompliant, a NIP delivery error with a resend and a wrong
    NIP, until each has its outcome."""
    internal = httpx.Client(base_url=stack.internal_url, timeout=10, headers={"x-api-key": INTERNAL_KEY})
    person = {"first_name": "María", "last_name_1": "López", "phone_number": PHONE, "country_code": "52",
              "rfc_pf": RFC}  # fmt: skip
    plans = [
        ("approved", EMAIL, [NIP]),
        ("approved", EMAIL.upper(), [NIP]),  # same e-mail: Kompliant answers DUPLICATE_EMAIL
        ("nip-error", EMAIL_2, [NIP]),  # first delivery fails, the bridge resends to the phone
        ("approved", EMAIL_3, [WRONG_NIP, NIP]),
    ]
    commands = []
    for scenario, email, nips in plans:
        answer = internal.post(
            "/v1/applications", json={"form": {**person, "email": email}, "scenarioId": scenario}
        )
        assert answer.status_code == 202, answer.text
        commands.append((answer.json()["command_id"], nips))
    # The Python API too (its RQ job description is built by RQ from the arguments).
    python_command = commands_api.start_application(
        stack.redis,
        {**person, "email": EMAIL_4},
        "approved",
        settings=load_settings(redis_url=stack.redis_server.url, bridge_data_keys=stack.stack.keys.data),
    )
    commands.append((python_command, [NIP]))

    def execution_of(command: str) -> str | None:
        result = commands_api.command_result(stack.redis, command)
        return (
            str(result["result"]["execution_id"]) if result and isinstance(result["result"], dict) else None
        )

    executions = [
        wait_until(lambda c=c: execution_of(c), timeout=30, what="an application to start")
        for c, _ in commands
    ]
    for execution_id, (_, nips) in zip(executions, commands, strict=True):

        def ready(e: str = execution_id) -> bool:
            fake = httpx.get(f"{stack.kiban_url}/_fake/executions/{e}", timeout=10).json()
            return fake["phase"] in ("VALIDATE", "VALIDATE_2") and fake["link_events"][-1:] == ["SUCCESS"]

        wait_until(ready, timeout=30, what="the NIP to be delivered")
        for nip in nips:
            answer = internal.post(f"/v1/applications/{execution_id}/nip", json={"nip": nip})
            assert answer.status_code == 202, answer.text
            time.sleep(0.5)

    def outcome(e: str) -> bool:
        types = {json.loads(x)["type"] for x in stack.redis.lrange(f"workfloo:timeline:{e}", 0, -1)}
        return bool(types & {"kompliant.workflow.started", "kompliant.workflow.conflict"})

    for execution_id in executions:
        wait_until(lambda e=execution_id: outcome(e), timeout=60, what=f"the outcome of {execution_id}")
    internal.close()
    return executions


def test_no_secret_or_pii_in_any_log_line(tmp_path: Path, figures: Any) -> None:
    with process_stack(
        tmp_path, {"BRIDGE_NIP_RESEND_DELAY_SECONDS": "0.2", "BRIDGE_RETRY_BASE_SECONDS": "0.05"}
    ) as stack:
        stack.start_worker()
        stack.start_worker()
        executions = _run_applications(stack)
        types = [
            json.loads(x)["type"]
            for e in executions
            for x in stack.redis.lrange(f"workfloo:timeline:{e}", 0, -1)
        ]
        _abuse_with_pii(stack.receiver_url)
        # The receiver and the workers must also keep a Redis outage free of personal data.
        stack.redis_server.stop()
        response = httpx.post(
            f"{stack.receiver_url}/v1/kiban/status",
            json={"id": executions[0], "status": "SUCCESS", "form": {"email": EMAIL}},
            headers={"x-api-key": CALLBACK_KEY},
            timeout=10,
        )
        assert response.status_code == 503
        time.sleep(1.0)
        stack.redis_server.start()
        time.sleep(1.0)
        lines = stack.log_lines()

    per_process = Counter(p for p, _ in lines)
    section = "no PII in logs"
    figures.add("applications (with rejection, resend, wrong NIP)", len(executions), section)
    figures.add(
        "events",
        " ".join(f"{k}:{v}" for k, v in sorted(Counter(types).items()) if "kompliant" in k or "nip." in k),
        section,
    )
    figures.add("log lines checked", len(lines), section)
    figures.add("lines per process", " ".join(f"{k}:{v}" for k, v in sorted(per_process.items())), section)
    leaks = _leaks(lines)
    figures.add("leaks", len(leaks), section)
    assert "kompliant.workflow.conflict" in types and "nip.resent" in types, "the flow missed a branch"
    assert per_process["worker"] > 0 and per_process["receiver"] > 0, (
        "a process wrote nothing: nothing checked"
    )
    assert not leaks, "\n".join(leaks[:20])


def test_the_leak_check_finds_every_kind_of_input() -> None:
    """Guard: the check above would see each value if it were logged (so its pass means something)."""
    values = [*SECRETS.values(), *PII.values(), f"nip={NIP}", "tel 55 1234 5678", EMAIL.upper()]
    for value in values:
        assert _leaks([("receiver", f'{{"event": "x", "detail": "{value}"}}')]), value
    assert not _leaks(
        [("receiver", '{"event": "receiver.redis_unavailable", "at": "2026-11-22T23:00:00.1234567Z"}')]
    )
    clean = f'{{"event": "kiban.ok", "timestamp": "2026-12-02T00:23:01.{WRONG_NIP}Z"}}'
    assert not _leaks([("worker", clean)])
    assert _leaks([("worker", f'{{"event": "nip.sent", "nip": {WRONG_NIP}}}')])


_ANY_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ANY_RFC = re.compile(r"\b[A-ZÑ&]{3,4}\d{6}[A-Z0-9]{3}\b")


def test_the_demo_writes_no_email_or_nip_to_any_log(tmp_path: Path, figures: Any) -> None:
    """``workfloo-bridge demo`` (every process of the bridge, generated keys and applicants) with its
    process logs kept: no e-mail address, RFC or the sandbox NIP in any of them or in its own output."""
    logs = tmp_path / "demo-logs"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "KIBAN_", "KOMPLIANT_", "REDIS_"))
    }
    done = subprocess.run(
        [str(BIN), "demo", "--applications", "4", "--log-dir", str(logs)],
        env=env, capture_output=True, timeout=180, check=False,
    )  # fmt: skip
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    lines = [("demo", line) for line in output.splitlines()]
    for path in sorted(logs.rglob("*")):
        if path.is_file():
            lines.extend((path.name, line) for line in path.read_text(errors="replace").splitlines())
    found = [
        f"{name}: {line[:200]!r}"
        for name, line in lines
        if _ANY_EMAIL.search(line) or _ANY_RFC.search(line) or re.search(rf"(?<!\d){NIP}(?!\d)", line)
    ]
    figures.add("demo log lines checked", len(lines), section="no PII in logs")
    figures.add("demo leaks", len(found), section="no PII in logs")
    assert len(lines) > 50, "the demo wrote almost nothing: nothing was checked"
    assert not found, "\n".join(found[:20])


# --- failures: a Kiban 400 on the form, and retries used up, with the worker at DEBUG ----------------

# Awkward forms of applicant data: a dashed RFC, a CURP, an integer phone, 4- and 8-digit NIPs, a
# URL-encoded e-mail (the fake answers 400 FORMAT_ERROR on it), names and an address with accents.
CANARY_FORM: dict[str, object] = {
    "first_name": "Begoña",
    "last_name_1": "Núñez",
    "apellido_materno": "Ibáñez",
    "email": "begona.nunez%40example.com",
    "rfc_pf": "NUIB-561231-GR8",
    "curp": "NUIB561231MDFXBG09",
    "telefono": 5587654321,
    "celular": "55 8765 4321",
    "nip": 7394,
    "nip_buro": "71930482",
    "domicilio": "Calle Ámsterdam 250",
    "colonia": "Hipódromo Condesa",
    "codigo_postal": "06100",
    "fecha_nacimiento": "1956-12-31",
}
VALID_EMAIL = "begona.nunez.pii@example.com"
CANARIES = {
    "first name": re.compile("Begoña", re.IGNORECASE),
    "last name": re.compile("Núñez|Ibáñez", re.IGNORECASE),
    "url-encoded e-mail": re.compile(r"begona\.nunez(%40|%2540|@)", re.IGNORECASE),
    "RFC": re.compile(r"NUIB[-\s]?561231[-\s]?GR8", re.IGNORECASE),
    "CURP": re.compile("NUIB561231MDFXBG09", re.IGNORECASE),
    "phone": re.compile(r"55[\s.-]?8765[\s.-]?4321"),
    "4-digit NIP": re.compile(r"(?<![\d.:-])7394(?!\d)"),
    "8-digit NIP": re.compile(r"(?<!\d)71930482(?!\d)"),
    "address": re.compile("Ámsterdam|Hipódromo", re.IGNORECASE),
    "postal code": re.compile(r"(?<![\d.:-])06100(?!\d)"),
    "birth date": re.compile("1956-12-31"),
}
# The fake's own words for the failures; a reason may carry its codes, never these.
VENDOR_TEXT = ("invalid email format", "can't be empty", "Service Unavailable")


def _canary_leaks(lines: list[tuple[str, str]]) -> list[str]:
    return [
        f"{process}: {name} in {line[:300]!r}"
        for process, line in lines
        for name, pattern in CANARIES.items()
        if pattern.search(line)
    ]


def _action_failed(stack: Bridge, type_: str = "action.failed") -> list[dict[str, Any]]:
    events = [json.loads(fields[b"event"]) for _id, fields in stack.redis.xrange("workfloo:events")]
    return [e for e in events if e["type"] == type_]


def test_failed_applications_leave_no_applicant_data_in_bridge_logs(tmp_path: Path, figures: Any) -> None:
    """A real receiver and a real worker, both at DEBUG: one ``start_application`` fails permanently on a
    Kiban 400 for the form, another spends its retry budget on Kiban 503s. No canary value in any line the
    bridge's processes wrote (the fakes' logs are not the bridge's), and every reason is codes only."""
    env = {
        "BRIDGE_RETRY_BASE_SECONDS": "0.05",
        "BRIDGE_RETRY_CAP_SECONDS": "0.2",
        "BRIDGE_RETRY_BUDGET_SECONDS": "0.5",
    }
    with process_stack(tmp_path, env) as stack:
        stack.start_worker()
        internal = httpx.Client(base_url=stack.internal_url, timeout=10, headers={"x-api-key": INTERNAL_KEY})
        answer = internal.post("/v1/applications", json={"form": CANARY_FORM, "scenarioId": "approved"})
        assert answer.status_code == 202, answer.text
        rejected = answer.json()["command_id"]
        wait_until(lambda: len(_action_failed(stack)) == 1, timeout=30, what="the form's 400 to fail the job")
        stack.kiban_faults(fail_next=1000, fail_status=503, fail_retry_after=None)
        answer = internal.post(
            "/v1/applications", json={"form": {**CANARY_FORM, "email": VALID_EMAIL}, "scenarioId": "approved"}
        )
        assert answer.status_code == 202, answer.text
        exhausted = answer.json()["command_id"]
        wait_until(lambda: len(_action_failed(stack)) == 2, timeout=30, what="the retries to be used up")
        stack.reset_faults()
        internal.close()
        failures = _action_failed(stack)
        dead = _action_failed(stack, "job.dead_lettered")
        letters = {d.job_id: d.reason for d in dead_letters.list_dead_letters(stack.redis, "workfloo")}
        statuses = {c: commands_api.command_result(stack.redis, c) for c in (rejected, exhausted)}
        lines = [(p, line) for p, line in stack.log_lines() if p in ("receiver", "worker")]

    section = "no PII in failure logs"
    leaks = _canary_leaks(lines)
    figures.add("bridge log lines checked (receiver, worker at DEBUG)", len(lines), section)
    per_process = Counter(p for p, _ in lines)
    figures.add("lines per process", " ".join(f"{k}:{v}" for k, v in sorted(per_process.items())), section)
    figures.add("canary leaks", len(leaks), section)
    assert not leaks, "\n".join(leaks[:20])
    assert per_process["worker"] > 20 and per_process["receiver"] > 0, (
        "a process wrote nothing: nothing checked"
    )
    assert all(s is not None and "failed" in s["status"].lower() for s in statuses.values()), statuses

    form_400 = "KibanValidationError: executeWorkflooForm: http 400: fields email(FORMAT_ERROR)"
    unavailable = "KibanRetryableError: executeWorkfloo: http 503"
    by_job = {e["data"]["job_id"]: e["data"] for e in failures}
    assert by_job[rejected]["reason"] == form_400 and by_job[rejected]["retryable"] is False
    assert by_job[exhausted]["reason"] == unavailable and by_job[exhausted]["attempts"] >= 2
    assert letters[rejected] == f"permanent: {form_400}"
    assert letters[exhausted] == f"retries exhausted: {unavailable}"
    logged = [json.loads(line) for _, line in lines if '"job_failed"' in line]
    assert sorted(r["reason"] for r in logged) == sorted([form_400, unavailable])
    assert sorted(e["data"]["reason"] for e in dead) == sorted([form_400, unavailable])
    assert {e["data"]["code"] for e in dead} == {"permanent", "retry_budget_spent"}
    reasons = [
        *(e["data"]["reason"] for e in failures),
        *(e["data"]["reason"] for e in dead),
        *letters.values(),
        *(r["reason"] for r in logged),
    ]
    figures.add("reasons checked", len(reasons), section)
    for reason in reasons:
        assert not any(text.lower() in reason.lower() for text in VENDOR_TEXT), reason


def test_the_canary_check_finds_every_canary() -> None:
    """Guard: each canary, in the form a careless log line would carry it, is seen by the check."""
    for value in CANARY_FORM.values():
        assert _canary_leaks([("worker", f"start_application({{'x': {value!r}}})")]), value
    assert _canary_leaks([("worker", "NUIB561231GR8 +52 55-8765-4321")])
    assert not _canary_leaks([("worker", '{"event": "job_failed", "pid": 73941, "t": "22:07:39.4821"}')])
