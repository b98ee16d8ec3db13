"""Secrets and PII: run an application through the bridge's processes with DEBUG logging and check that
no NIP, API key, RFC, phone number or e-mail from the inputs appears in any process's log.

Processes whose output is captured: the receiver (``workfloo-bridge serve``), the fake Kiban and the
fake Kompliant (``python -m workers.fakes.*``) and redis-server's own log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from resilience_stack import CALLBACK_KEY, DEFINITION, INTERNAL_KEY, KIBAN_KEY, process_stack, wait_for

from workers.fakes import kompliant as fake_kompliant
from workers.kiban.client import KibanClient
from workers.kompliant.client import KompliantClient

NIP = "123456"  # the sandbox NIP
EMAIL = "maria.lopez.pii@example.com"
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
PII = {"e-mail": EMAIL, "phone": PHONE, "RFC": RFC, "CURP": CURP}


def _leaks(lines: list[tuple[str, str]]) -> list[str]:
    patterns = {
        name: re.compile(re.escape(value), re.IGNORECASE) for name, value in {**SECRETS, **PII}.items()
    }
    patterns["NIP"] = re.compile(rf"(?<!\d){NIP}(?!\d)")
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
        # Personal data in the query and the path.
        assert (
            client.post(f"{receiver_url}/v1/kiban/finished?execution_id={EMAIL}", headers=auth).status_code
            == 422
        )
        assert (
            client.post(
                f"{receiver_url}/v1/kiban/executions/{PHONE}-{NIP}/finished", headers=auth
            ).status_code
            == 200
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


def test_no_secret_or_pii_in_any_log_line(tmp_path: Path, figures: Any) -> None:
    with process_stack(tmp_path) as stack:
        receiver = stack.receiver_url
        kiban = KibanClient(stack.kiban_url, KIBAN_KEY)
        kompliant = KompliantClient(
            stack.kompliant_url,
            api_key=fake_kompliant.DEFAULT_API_KEY,
            secret_key=fake_kompliant.DEFAULT_SECRET_KEY,
            auth_token=fake_kompliant.DEFAULT_AUTH_TOKEN,
            account_id=fake_kompliant.DEFAULT_ACCOUNT_ID,
        )
        with kiban, kompliant:
            execution_id = kiban.execute(
                DEFINITION,
                scenario_id="approved",
                callback_url=f"{receiver}/v1/kiban/status",
                callback_api_key=CALLBACK_KEY,
                form={
                    "email": EMAIL, "first_name": "María", "last_name_1": "López",
                    "phone_number": PHONE, "country_code": "52", "rfc_pf": RFC,
                },
            )  # fmt: skip
            kiban.send_nip(
                execution_id,
                url_callback=f"{receiver}/v1/kiban/executions/{execution_id}/nip-events",
                api_key_callback=CALLBACK_KEY,
                country_code="52",
                phone_number=PHONE,
            )
            wait_for(lambda: kiban.get_status(execution_id).phase == "VALIDATE", 10, "the NIP delivery")
            assert kiban.validate_nip_twice(execution_id, NIP) == "VALIDATED"
            wait_for(lambda: kiban.get_status(execution_id).is_terminal, 10, "the decision")
            finished = f"rq:job:finished-{execution_id}"
            wait_for(lambda: stack.redis.exists(finished), 10, "the end-of-workfloo callback in the queue")
            created = kompliant.create_business_application(
                email=EMAIL, first_name="María", last_name="López", referrer_value=execution_id
            )
            kompliant.start_workflow(created.workflow_id)
        _abuse_with_pii(receiver)
        # The receiver must also keep Redis outages free of personal data.
        stack.redis_server.stop()
        response = httpx.post(
            f"{receiver}/v1/kiban/status",
            json={"id": execution_id, "status": "SUCCESS", "form": {"email": EMAIL}},
            headers={"x-api-key": CALLBACK_KEY},
            timeout=10,
        )
        assert response.status_code == 503
        stack.redis_server.start()
        jobs = stack.redis.llen("rq:queue:workfloo")
        lines = stack.log_lines()

    per_process = {proc: sum(1 for p, _ in lines if p == proc) for proc, _ in lines}
    figures.add("callback jobs stored", jobs, section="no PII in logs")
    figures.add("log lines checked", len(lines), section="no PII in logs")
    figures.add(
        "lines per process", " ".join(f"{k}:{v}" for k, v in sorted(per_process.items())), "no PII in logs"
    )
    leaks = _leaks(lines)
    figures.add("leaks", len(leaks), section="no PII in logs")
    assert jobs >= 5, "the flow did not reach the receiver"
    assert any(p == "receiver" for p, _ in lines), "the receiver wrote no log line: nothing was checked"
    assert not leaks, "\n".join(leaks[:20])


def test_the_leak_check_finds_every_kind_of_input() -> None:
    """Guard: the check above would see each value if it were logged (so its pass means something)."""
    values = [*SECRETS.values(), *PII.values(), f"nip={NIP}", "tel 55 1234 5678", EMAIL.upper()]
    for value in values:
        assert _leaks([("receiver", f'{{"event": "x", "detail": "{value}"}}')]), value
    assert not _leaks(
        [("receiver", '{"event": "receiver.redis_unavailable", "at": "2026-11-22T23:00:00.1234567Z"}')]
    )
