"""Erasure of one application, end to end: two applications run the whole flow through the receiver, real
workers, Redis and the fakes; one is forgotten (CLI and HTTP endpoint); afterwards no Redis key, value,
job or stream entry of any type mentions its execution id, while the other application is untouched."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import subprocess
import zlib
from typing import Any

import httpx
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from tests.support.workers_stack import BIN, INTERNAL_KEY, Bridge
from workers.core import keys
from workers.core.contract import JOB_SERIALIZER, VALIDATE_FUNCTION
from workers.core.events import EventType as T
from workers.fanout.consumer import Consumer
from workers.jobs import state
from workers.sandbox.wait import wait_until


def _decoded(value: bytes) -> list[bytes]:
    """The value and what it may hide: RQ job data (zlib) and results (base64 of the serializer's bytes)."""
    out = [value]
    with contextlib.suppress(zlib.error):
        out.append(zlib.decompress(value))
    with contextlib.suppress(binascii.Error, ValueError):
        out.append(base64.b64decode(value, validate=True))
    return out


def mentions(client: redis.Redis, needle: str) -> list[str]:
    """Every key whose name, or any member, field, value or stream entry of any type, holds ``needle``."""
    target = needle.encode()
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[bytes] = [key]
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                values += [field, value]
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"set":
            values += list(client.smembers(key))
        elif kind == b"zset":
            values += client.zrange(key, 0, -1)
        elif kind == b"stream":
            for entry_id, fields in client.xrange(key):
                values.append(entry_id)
                for field, value in fields.items():
                    values += [field, value]
        else:
            raise AssertionError(f"unexpected key type {kind!r} of {key!r}")
        if any(target in piece for value in values for piece in _decoded(value)):
            found.append(key.decode())
    return found


def run_cli(bridge: Bridge, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], env=bridge.env, capture_output=True, text=True, timeout=60, check=check
    )


def full_flow(bridge: Bridge, scenario: str) -> str:
    execution_id = bridge.start_application(scenario)
    if scenario == "nip-error":
        bridge.wait_types(execution_id, T.NIP_FAILED, T.NIP_RESENT, T.NIP_DELIVERED)
    bridge.validate_nip(execution_id)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)
    return execution_id


def quiet(bridge: Bridge, execution_id: str) -> None:
    """Wait until no job for the execution is queued, running or scheduled (its webhooks included)."""
    bridge.wait_callbacks_processed()

    def idle() -> bool:
        queue = Queue(bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER)
        return (
            queue.count == 0
            and queue.started_job_registry.count == 0
            and queue.scheduled_job_registry.count == 0
            and not bridge.is_open(execution_id)
        )

    wait_until(idle, timeout=30, what="the bridge queue to drain", interval=0.1)


def dead_letter_for(bridge: Bridge, execution_id: str) -> str:
    """A real dead letter of the execution: a validate command whose NIP reference is gone."""
    queue = Queue(bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER)
    command = {"command_id": f"cmd-nip-dead-{execution_id}", "execution_id": execution_id, "nip_ref": "gone"}
    job = queue.enqueue(VALIDATE_FUNCTION, command, job_id=f"cmd-nip-dead-{execution_id[:6]}")
    failed = FailedJobRegistry(queue.name, connection=bridge.redis, serializer=JOB_SERIALIZER)
    wait_until(lambda: job.id in failed, timeout=20, what="the dead letter")
    return str(job.id)


def consumer_dead_letters(bridge: Bridge) -> None:
    """A stream consumer that gives up on ``application.started`` entries at once: dead-letter stream."""
    consumer = Consumer(
        bridge.redis, "erasure-test", "c1", lambda event: None, types=["application.started"],
        max_deliveries=0, start_id="0", block_ms=10, settings=bridge.settings,
    )  # fmt: skip
    consumer.run_once(block=False)
    assert consumer.stats.dead_lettered >= 2


def test_forget_erases_one_application_and_keeps_the_other(bridge: Bridge) -> None:
    gone = full_flow(bridge, "nip-error")  # resend jobs, NIP ref, link id, hand-off, webhook-free
    kept = full_flow(bridge, "approved")
    quiet(bridge, gone)
    quiet(bridge, kept)
    dead = dead_letter_for(bridge, gone)
    dead_kept = dead_letter_for(bridge, kept)
    consumer_dead_letters(bridge)
    assert bridge.field(gone, state.LINK_ID)  # the NIP link mapping exists before
    before_kept = sorted(mentions(bridge.redis, kept))
    assert mentions(bridge.redis, gone)

    done = run_cli(bridge, "forget", gone, "--json")
    report = json.loads(done.stdout)
    assert report["jobs"] > 5 and report["keys"] > 5 and report["stream_entries"] > 10
    assert report["dead_letter_entries"] >= 1 and report["forced"] is False
    assert report["execution_sha256"] == hashlib.sha256(gone.encode()).hexdigest()

    assert mentions(bridge.redis, gone) == []
    assert sorted(mentions(bridge.redis, kept)) == before_kept  # the other application is untouched
    assert dead_kept in FailedJobRegistry(
        bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER
    )
    assert dead not in FailedJobRegistry(
        bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER
    )
    assert T.WORKFLOO_COMPLETED in bridge.types(kept)
    assert bridge.types(gone) == []
    assert all(execution != gone for _, execution, _ in bridge.stream())
    [forgotten] = [
        json.loads(fields[b"event"])
        for _, fields in bridge.redis.xrange(bridge.settings.events_stream)
        if fields[b"type"] == T.APPLICATION_FORGOTTEN.encode()
    ]
    assert forgotten["execution_id"] is None
    assert forgotten["data"]["execution_sha256"] == report["execution_sha256"]
    assert forgotten["data"]["deleted"]["jobs"] == report["jobs"]

    again = run_cli(bridge, "forget", gone)
    assert again.returncode == 0 and "nothing left to erase" in again.stdout
    assert mentions(bridge.redis, gone) == []


def waiting_for_nip(bridge: Bridge) -> str:
    """An application waiting for its NIP (an open execution), its NIP callbacks processed."""
    execution_id = bridge.start_application("abandoned")
    bridge.wait_nip_phase([execution_id])
    bridge.wait_callbacks_processed()
    return execution_id


def test_work_in_flight_refuses_unless_forced(bridge: Bridge) -> None:
    execution_id = waiting_for_nip(bridge)
    assert bridge.is_open(execution_id)

    refused = run_cli(bridge, "forget", execution_id, check=False)
    assert refused.returncode == 1
    assert "work in flight" in refused.stderr and execution_id not in refused.stderr
    assert bridge.types(execution_id)  # nothing was deleted
    assert bridge.is_open(execution_id)

    forced = run_cli(bridge, "forget", execution_id, "--force", "--json")
    assert json.loads(forced.stdout)["was_open"] is True
    assert not bridge.is_open(execution_id)
    assert bridge.types(execution_id) == []


def _delete(
    bridge: Bridge, execution_id: str, key: str | None = INTERNAL_KEY, **params: Any
) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    return httpx.delete(
        f"{bridge.internal_url}/v1/applications/{execution_id}", headers=headers, params=params
    )


def test_the_endpoint_enqueues_the_erasure_and_a_worker_runs_it(bridge: Bridge) -> None:
    gone = full_flow(bridge, "approved")
    kept = full_flow(bridge, "approved")
    quiet(bridge, gone)
    assert _delete(bridge, gone, key=None).status_code == 401
    assert _delete(bridge, gone, key="wrong-key").status_code == 401
    assert _delete(bridge, gone, force="maybe").status_code == 422
    assert _delete(bridge, "not an id").status_code in (404, 422)
    assert mentions(bridge.redis, gone)  # nothing happened yet

    response = _delete(bridge, gone)
    assert response.status_code == 202
    command_id = response.json()["command_id"]
    assert command_id.startswith("cmd-forget-") and response.json()["status"] == "accepted"

    def forgotten() -> dict[str, Any] | None:
        for _, fields in bridge.redis.xrange(bridge.settings.events_stream):
            event = json.loads(fields[b"event"])
            if event["type"] == T.APPLICATION_FORGOTTEN and event["data"]["command_id"] == command_id:
                return dict(event)
        return None

    event = wait_until(forgotten, timeout=20, what="application.forgotten")
    assert event["data"]["deleted"]["jobs"] > 0
    # The forget job's own record named the execution: RQ drops it once the job succeeded.
    wait_until(lambda: not bridge.redis.exists(Job.key_for(command_id)), timeout=10, what="the job's record")
    assert mentions(bridge.redis, gone) == []
    assert T.KOMPLIANT_WORKFLOW_STARTED in bridge.types(kept)


def test_the_endpoint_refusal_is_an_action_failed_event(bridge: Bridge) -> None:
    execution_id = waiting_for_nip(bridge)
    response = _delete(bridge, execution_id)
    assert response.status_code == 202
    failed = bridge.wait_types(execution_id, T.ACTION_FAILED)
    assert T.ACTION_FAILED in failed
    [event] = [e for e in bridge.events(execution_id, T.ACTION_FAILED) if e.data["action"] == "forget"]
    assert "work in flight" in event.data["reason"]
    assert bridge.is_open(execution_id)

    forced = _delete(bridge, execution_id, force="true")
    assert forced.status_code == 202
    wait_until(lambda: not bridge.redis.exists(keys.timeline(execution_id)), timeout=20, what="the erasure")
    wait_until(lambda: mentions(bridge.redis, execution_id) == [], timeout=10, what="no trace left")
