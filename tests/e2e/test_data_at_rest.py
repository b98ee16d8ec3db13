"""Applicant data at rest: the start form and the NIP reach Redis only sealed (every key of every type
dumped, compressed job data unpacked), are opened by the job step that sends them, and are gone once
that step succeeded; without a data key the receiver and the workers refuse to start."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import zlib
from typing import Any

import httpx
import redis
from rq import Queue
from rq.job import Job

from tests import ROOT
from tests.support.workers_stack import INTERNAL_KEY, Bridge
from workers.core import contract, keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.jobs import api as commands_api
from workers.jobs import data_keys
from workers.sandbox.redis_server import free_port
from workers.sandbox.wait import wait_until

# Awkward forms on purpose: accents, a dashed RFC, a CURP, an integer phone, an 8-digit NIP.
CANARY_FORM: dict[str, Any] = {
    "email": "canary.zoe@example.com",
    "first_name": "Zoé-Canarioá",
    "last_name_1": "Ñandú-Canarioñ",
    "rfc_pf": "CANR-561231-GR8",
    "curp": "CANR561231HDFXYZ09",
    "phone_number": 5598761234,
}
CANARY_NIP = "98765432"
CANARIES = [
    "canary.zoe",
    "Canarioá",
    "Canarioñ",
    "CANR-561231",
    "CANR561231HDF",
    "5598761234",
    CANARY_NIP,
]


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key).decode()
    found: list[bytes] = []
    if kind == "string":
        found.append(client.get(key) or b"")
    elif kind == "hash":
        for field, value in client.hgetall(key).items():
            found += [field, value]
    elif kind == "list":
        found += client.lrange(key, 0, -1)
    elif kind == "set":
        found += list(client.smembers(key))
    elif kind == "zset":
        found += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        for entry_id, fields in client.xrange(key):
            found.append(entry_id)
            for field, value in fields.items():
                found += [field, value]
    return found


def dump(client: redis.Redis) -> str:
    """Every key name and value in the database as text; zlib-compressed values (RQ's job data) are
    unpacked too, so nothing hides behind compression."""
    chunks: list[bytes] = []
    for key in client.scan_iter(count=1000):
        chunks.append(key)
        for value in _values(client, key):
            chunks.append(value)
            with contextlib.suppress(zlib.error):
                chunks.append(zlib.decompress(value))
    return b"\n".join(chunks).decode("utf-8", errors="replace")


def canaries_in(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def _post(bridge: Bridge, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{bridge.internal_url}{path}", json=body, headers={"x-api-key": INTERNAL_KEY}, timeout=10
    )


def test_form_and_nip_are_sealed_at_rest_then_opened_sent_and_dropped(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    client = bridge.redis
    # No worker yet: the commands wait in Redis exactly as they were written.
    over_http = _post(bridge, "/v1/applications", {"form": CANARY_FORM, "scenarioId": "approved"})
    assert over_http.status_code == 202, over_http.text
    http_command = over_http.json()["command_id"]
    api_form = {**CANARY_FORM, "email": "canary.zoe+api@example.com"}  # Kompliant refuses a repeated e-mail
    api_command = commands_api.start_application(client, api_form, "approved", settings=bridge.settings)
    nip_over_http = _post(bridge, "/v1/applications/657118e1d511b6e54fe2a969/nip", {"nip": CANARY_NIP})
    assert nip_over_http.status_code == 202
    nip_command = nip_over_http.json()["command_id"]
    commands_api.validate_nip(client, "657118e1d511b6e54fe2a969", CANARY_NIP, settings=bridge.settings)
    assert client.exists(keys.nip_ref(nip_command)) and client.ttl(keys.nip_ref(nip_command)) > 0
    assert client.get(keys.nip_ref(nip_command)).startswith(b"wfe1.")  # type: ignore[union-attr]
    assert canaries_in(dump(client)) == []
    for command_id in (http_command, api_command):
        assert "sealed_form" in Job.fetch(command_id, connection=client, serializer=JOB_SERIALIZER).args[0]
    client.delete(*(k for k in client.scan_iter(f"{keys.PREFIX}:nipref:*")))
    client.delete(*(k for k in client.scan_iter("rq:job:cmd-nip-*")))

    # A worker opens the forms only to submit them: Kiban gets the plaintext, Redis keeps no copy.
    bridge.start_worker()
    executions = []
    for command_id, form in ((http_command, CANARY_FORM), (api_command, api_form)):
        job = Job.fetch(command_id, connection=client, serializer=JOB_SERIALIZER)
        wait_until(lambda j=job: j.get_status(refresh=True) == "finished", timeout=20, what=command_id)  # type: ignore[misc]
        execution_id = job.return_value()["execution_id"]  # type: ignore[index]
        assert bridge.kiban_state.execution(execution_id).form == form
        assert (
            "sealed_form" not in Job.fetch(command_id, connection=client, serializer=JOB_SERIALIZER).args[0]
        )
        executions.append(execution_id)

    # The NIP is opened to validate and deleted once Kiban accepted it; the application goes through.
    for execution_id in executions:
        bridge.wait_types(execution_id, T.NIP_DELIVERED)
        command_id = bridge.validate_nip(execution_id)
        bridge.wait_types(execution_id, T.NIP_VALIDATED)
        assert not client.exists(keys.nip_ref(command_id))
        bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
        assert bridge.business_applications(execution_id) == 1
    command_jobs = "\n".join(
        zlib.decompress(client.hget(f"rq:job:{c}", "data") or b"").decode(errors="replace")
        for c in (http_command, api_command)
    )
    assert canaries_in(command_jobs) == []


def test_a_sealed_form_moved_to_another_job_fails_without_echoing_it(bare_bridge: Bridge) -> None:
    bridge = bare_bridge
    client = bridge.redis
    sealed = contract.start_command("cmd-start-a", CANARY_FORM, "approved", data_keys(bridge.settings))
    moved = {**sealed, "command_id": "cmd-start-b"}
    job = Queue(bridge.settings.bridge_queue, connection=client, serializer=JOB_SERIALIZER).enqueue(
        contract.START_FUNCTION, moved, job_id="cmd-start-b"
    )
    executions_before = len(bridge.kiban_state.executions)
    bridge.start_worker()
    wait_until(lambda: job.get_status(refresh=True) == "failed", timeout=20, what="the moved form to fail")
    result = job.latest_result()
    assert result is not None and "DataKeyError" in (result.exc_string or "")
    assert canaries_in(result.exc_string or "") == []
    assert len(bridge.kiban_state.executions) == executions_before  # refused before any effect


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.ops.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_receiver_and_worker_refuse_to_start_without_a_data_key(bare_bridge: Bridge) -> None:
    env = {**bare_bridge.env, "BRIDGE_DATA_KEYS": ""}
    for args in (["serve", "--port", str(free_port())], ["worker", "--burst"]):
        done = _run(args, env)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "BRIDGE_DATA_KEYS" in lines[0], (args, done.stderr[-2000:])
    checked = _run(["check", "--json"], env)
    assert (
        checked.returncode == 1 and '"data-keys"' in checked.stdout and "BRIDGE_DATA_KEYS" in checked.stdout
    )
