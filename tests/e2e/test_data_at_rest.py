"""Applicant data at rest: the start form and the NIP reach Redis only sealed (every key of every type
dumped, compressed job data unpacked), are opened by the job step that sends them, and are gone once
that step succeeded; after every failure path no canary is in Redis or in its AOF files; without a data
key the receiver and the workers refuse to start."""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import re
import subprocess
import sys
import zlib
from typing import Any

import httpx
import redis
from rq import Queue
from rq.job import Job

from tests import ROOT
from tests.e2e.test_retention import documented_exceptions, idle
from tests.support.workers_stack import INTERNAL_KEY, Bridge, make_bridge
from workers.core import contract, keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.jobs import api as commands_api
from workers.jobs import data_keys
from workers.jobs.erasure import forget_application
from workers.runtime import dead_letters
from workers.sandbox.redis_server import RedisServer, free_port
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


# --- every failure path, then a full dump of Redis and of its AOF files ------------------------------

# One canary set per field class, in the awkward forms: accents, a dashed RFC, a CURP, an address, an
# integer phone, a URL-encoded e-mail (Kiban answers 400 on it), NIPs of 4 and 8 digits.
AOF_FORM: dict[str, Any] = {
    "first_name": "Begoña-Canarioé",
    "last_name_1": "Ibáñez-Canarioí",
    "rfc_pf": "CANB-561231-GR8",
    "curp": "CANB561231MDFXBG09",
    "domicilio": "Calle Ámsterdam-Canario 250",
    "phone_number": 5587651234,
    "nip_buro": "71930482",
}
AOF_EMAIL = "canary.begona@example.com"
ENCODED_EMAIL = "canary.begona%40example.com"
WRONG_NIPS = ("7394", "98765432")
AOF_CANARIES = {
    "names": re.compile("Canarioé|Canarioí", re.IGNORECASE),
    "RFC": re.compile(r"CANB[-\s]?561231[-\s]?GR8", re.IGNORECASE),
    "CURP": re.compile("CANB561231MDFXBG09", re.IGNORECASE),
    "address": re.compile("Ámsterdam-Canario", re.IGNORECASE),
    "phone": re.compile(r"55[\s.-]?8765[\s.-]?1234"),
    "e-mail": re.compile(r"canary\.begona(@|%40|%2540)", re.IGNORECASE),
    "form NIP": re.compile(r"(?<![\w.:+/=-])71930482(?!\w)"),
    "4-digit NIP": re.compile(r"(?<![\w.:+/=-])7394(?!\w)"),
    "8-digit NIP": re.compile(r"(?<![\w.:+/=-])98765432(?!\w)"),
}


def _unpacked(value: bytes) -> list[bytes]:
    """The value and what RQ hides it behind: zlib (job data, exc_info), base64 of zlib (results)."""
    out = [value]
    with contextlib.suppress(zlib.error):
        out.append(zlib.decompress(value))
    with contextlib.suppress(binascii.Error, ValueError, zlib.error):
        raw = base64.b64decode(value, validate=True)
        out.append(raw)
        out.append(zlib.decompress(raw))
    return out


def aof_commands(data: bytes) -> list[list[bytes]]:
    """The commands of an AOF file (RESP arrays of bulk strings; ``#`` annotation lines skipped)."""
    commands: list[list[bytes]] = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n", at)
        line, at = data[at:end], end + 2
        if line.startswith(b"#"):
            continue
        assert line.startswith(b"*"), f"not an AOF command at byte {at}: {line[:40]!r}"
        args: list[bytes] = []
        for _ in range(int(line[1:])):
            end = data.index(b"\r\n", at)
            size = int(data[at + 1 : end])
            args.append(data[end + 2 : end + 2 + size])
            at = end + 2 + size + 2
        commands.append(args)
    return commands


def canary_leaks(chunks: list[bytes], where: str) -> list[str]:
    found = []
    for chunk in chunks:
        for value in _unpacked(chunk):
            text = value.decode("utf-8", errors="replace")
            found += [
                f"{where}: {name} in {text[:200]!r}" for name, p in AOF_CANARIES.items() if p.search(text)
            ]
    return found


def _wait_job(client: redis.Redis, job_id: str, *statuses: str, timeout: float = 30) -> Job:
    def ended() -> Job | None:
        job = Job.fetch(job_id, connection=client, serializer=JOB_SERIALIZER)
        return job if job.get_status(refresh=True) in statuses else None

    return wait_until(ended, timeout=timeout, what=f"{job_id} to be {'/'.join(statuses)}", interval=0.1)


def _outcome(bridge: Bridge, execution_id: str) -> bool:
    return bool(
        {T.KOMPLIANT_WORKFLOW_STARTED, T.KOMPLIANT_WORKFLOW_REJECTED, T.KOMPLIANT_WORKFLOW_CONFLICT}
        & set(bridge.types(execution_id))
    )


def _every_path(bridge: Bridge, client: redis.Redis) -> list[str]:
    """Run the canary applications through every path; the workers' log lines."""
    workers = {name: bridge.start_worker(name) for name in ("canary-w1", "canary-w2")}

    # A form Kiban refuses (the URL-encoded e-mail): a permanent failure, the sealed form kept.
    refused = _post(
        bridge, "/v1/applications", {"form": {**AOF_FORM, "email": ENCODED_EMAIL}, "scenarioId": "approved"}
    )
    assert refused.status_code == 202, refused.text
    _wait_job(client, refused.json()["command_id"], "failed")

    # Retries used up on Kiban 503s, then the dead letter replayed once Kiban is back.
    bridge.kiban_faults(fail_next=1000, fail_status=503, fail_retry_after=None)
    form = {**AOF_FORM, "email": "replayed." + AOF_EMAIL}
    replayed = commands_api.start_application(client, form, "approved", settings=bridge.settings)
    _wait_job(client, replayed, "failed")
    bridge.reset_faults()
    dead_letters.replay(client, bridge.settings.bridge_queue, replayed)
    _wait_job(client, replayed, "finished")

    # The happy path with a wrong NIP first (4 and 8 digits: Kiban's 400), over HTTP and the API;
    # the second application repeats the first's e-mail: Kompliant refuses it (DUPLICATE_EMAIL), a conflict.
    executions = []
    for email in (AOF_EMAIL, AOF_EMAIL.upper()):
        answer = _post(
            bridge, "/v1/applications", {"form": {**AOF_FORM, "email": email}, "scenarioId": "approved"}
        )
        assert answer.status_code == 202, answer.text
        job = _wait_job(client, answer.json()["command_id"], "finished")
        executions.append(job.return_value()["execution_id"])  # type: ignore[index]
    for execution_id, wrong in zip(executions, WRONG_NIPS, strict=True):
        bridge.wait_types(execution_id, T.NIP_DELIVERED)
        nip_command = _post(bridge, f"/v1/applications/{execution_id}/nip", {"nip": wrong})
        assert nip_command.status_code == 202, nip_command.text
        _wait_job(client, nip_command.json()["command_id"], "failed", "finished")
        bridge.validate_nip(execution_id)
    for execution_id in executions:
        wait_until(lambda e=execution_id: _outcome(bridge, e), timeout=30, what="the Kompliant outcome")  # type: ignore[misc]
    assert T.KOMPLIANT_WORKFLOW_CONFLICT in bridge.types(executions[1])

    # A worker SIGKILLed while it submits a form (slow Kiban): the job runs again elsewhere.
    bridge.kiban_faults(latency_ms=2000)
    form = {**AOF_FORM, "email": "crashed." + AOF_EMAIL}
    crashed = commands_api.start_application(client, form, "approved", settings=bridge.settings)
    running = wait_until(
        lambda: next((n for n in workers if bridge.current_job(n) == crashed), None),
        timeout=20, what="the start job to run",
    )  # fmt: skip
    bridge.kill(workers.pop(running))
    bridge.reset_faults()
    bridge.start_worker("canary-w3")
    job = _wait_job(client, crashed, "finished", timeout=40)
    assert job.meta.get(contract.CRASH_REQUEUES) == 1

    # The first application erased once its work is done.
    wait_until(lambda: idle(client), timeout=30, what="every bridge job to end", interval=0.2)
    forget_application(client, bridge.settings, executions[0], force=True)
    wait_until(lambda: idle(client), timeout=30, what="every bridge job to end", interval=0.2)
    return [line for role, line in bridge.log_lines() if role.startswith("canary-w")]


def test_canaries_through_every_failure_path_leave_no_plaintext_in_redis_or_its_aof(
    private_redis: RedisServer,
) -> None:
    """Canary applications through the happy path and every failure path (a form Kiban refuses, retries
    used up and the dead letter replayed, wrong NIPs of 4 and 8 digits, a Kompliant rejection, a worker
    SIGKILLed mid-job, an erasure), with the workers at DEBUG. Then: no canary in their logs, in any key
    of any type (RQ's encodings undone), or in any command of the AOF files on disk; the NIP stash is
    written sealed and deleted; every key has a TTL or is in the documented list."""
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("appendfsync", "always")  # every write on disk before the files are read
    tuning = {"BRIDGE_LOG_LEVEL": "DEBUG", "BRIDGE_RETRY_BUDGET_SECONDS": "0.5"}
    with contextlib.contextmanager(make_bridge)(tuning, redis_url=private_redis.url) as bridge:
        worker_lines = _every_path(bridge, client)

    # No canary in the workers' DEBUG logs.
    assert len(worker_lines) > 100, "the workers wrote almost nothing: nothing was checked"
    assert canary_leaks([line.encode() for line in worker_lines], "worker log") == []

    # No canary in any key of any type.
    chunks: list[bytes] = []
    undocumented, allowed = [], documented_exceptions()
    for key in client.scan_iter(count=1000):
        chunks += [key, *_values(client, key)]
        if client.ttl(key) == -1 and not any(fnmatch.fnmatchcase(key.decode(), p) for p in allowed):
            undocumented.append(key.decode())
    assert any(key.startswith(b"rq:results:") for key in chunks)  # the failure records are there
    assert canary_leaks(chunks, "redis") == []
    assert undocumented == [], undocumented

    # No canary in any AOF file, any command, any argument; the NIP stash only ever written sealed.
    files = sorted((private_redis.dir / "appendonlydir").iterdir())
    commands = [c for f in files if f.name.endswith(".incr.aof") for c in aof_commands(f.read_bytes())]
    assert len(commands) > 500, "the AOF holds almost nothing: nothing was checked"
    assert [f.name for f in files if canary_leaks([f.read_bytes()], f.name)] == []
    assert canary_leaks([arg for command in commands for arg in command], "aof") == []
    stash = [c for c in commands if len(c) > 1 and c[1].startswith(f"{keys.PREFIX}:nipref:".encode())]
    writes = [c for c in stash if c[0].upper() == b"SET"]
    assert len(writes) >= 4 and all(c[2].startswith(b"wfe1.") for c in writes), writes
    assert sum(c[0].upper() in (b"DEL", b"UNLINK") for c in stash) >= 4, stash
    client.close()


def test_the_at_rest_check_finds_every_canary_even_one_deleted(private_redis: RedisServer) -> None:
    """Guard: each canary, plain or behind RQ's encodings, is seen; a value written and deleted is gone
    from a dump but still in the AOF, where the check finds it."""
    form = {**AOF_FORM, "email": ENCODED_EMAIL, "nips": WRONG_NIPS}
    for name, value in form.items():
        text = f"{name}={value!r}".encode()
        for packed in (text, zlib.compress(text), base64.b64encode(zlib.compress(text))):
            assert canary_leaks([packed], "guard"), (name, packed)
    clean = b'{"event": "job_failed", "pid": 73941, "at": "22:07:39.7394", "id": "x7394y"}'
    assert canary_leaks([clean], "guard") == []
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("appendfsync", "always")
    client.set(f"{keys.PREFIX}:nipref:guard", WRONG_NIPS[1], ex=60)
    client.delete(f"{keys.PREFIX}:nipref:guard")
    assert canary_leaks([v for k in client.scan_iter() for v in [k, *_values(client, k)]], "redis") == []
    files = sorted((private_redis.dir / "appendonlydir").glob("*.incr.aof"))
    commands = [c for f in files for c in aof_commands(f.read_bytes())]
    assert [c[0] for c in commands if c[1:2] == [f"{keys.PREFIX}:nipref:guard".encode()]] == [b"SET", b"DEL"]
    assert canary_leaks([arg for command in commands for arg in command], "aof")
    client.close()
