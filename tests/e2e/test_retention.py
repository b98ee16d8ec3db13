"""Retention: after the end-to-end flows (approved, rejected, NIP resend, invalid destination, a dead
letter), every key in Redis has a TTL unless its pattern is in the exception table of
``docs/operations.md`` ("Keys without a TTL"), which this test reads."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import redis

from tests.support.workers_stack import Bridge
from workers.core.events import EventType as T
from workers.sandbox.wait import wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
SECTION = "## Keys without a TTL"


def documented_exceptions() -> list[str]:
    """The key patterns (in backticks, first column) of the section's ``| pattern |`` table."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    table = section.split("| pattern |", 1)[1].split("\n\n", 1)[0]
    first_cells = [row.split("|")[1] for row in table.splitlines()[2:] if row.startswith("|")]
    patterns = [pattern for cell in first_cells for pattern in re.findall(r"`([^`]+)`", cell)]
    assert patterns, "the exception table is empty"
    return patterns


def idle(client: redis.Redis) -> bool:
    """No job waiting, scheduled or running: RQ sets a job's TTL only when it ends."""
    for key in client.scan_iter("rq:*", count=1000):
        name = key.decode()
        kind = client.type(key).decode()
        if name.startswith("rq:queue:") and kind == "list" and client.llen(key):
            return False
        registry = name.startswith(("rq:wip:", "rq:scheduled:", "rq:deferred:"))
        if kind == "zset" and registry and client.zcard(key):
            return False
    return True


def test_every_key_left_by_the_flows_has_a_ttl_or_is_documented(bridge: Bridge) -> None:
    approved = bridge.start_application("approved")
    rejected = bridge.start_application("rejected")
    resent = bridge.start_application("nip-error")
    invalid = bridge.start_application("nip-invalid")
    for execution_id in (approved, rejected):
        bridge.validate_nip(execution_id)
    bridge.wait_types(resent, T.NIP_DELIVERED)
    bridge.validate_nip(resent)
    bridge.wait_types(approved, T.KOMPLIANT_WORKFLOW_STARTED)
    bridge.wait_types(rejected, T.WORKFLOO_COMPLETED)
    bridge.wait_types(resent, T.KOMPLIANT_WORKFLOW_STARTED)
    bridge.wait_types(invalid, T.NIP_FAILED)
    # A dead letter: Kompliant refuses with a permanent 400, the job fails into the failed registry.
    bridge.kompliant_faults(fail_next=1000, fail_status=400, fail_retry_after=None)
    failing = bridge.start_application("approved")
    bridge.validate_nip(failing)
    bridge.wait_types(failing, T.WORKFLOO_COMPLETED, T.ACTION_FAILED)
    bridge.reset_faults()
    bridge.wait_callbacks_processed()
    wait_until(lambda: idle(bridge.redis), timeout=30, what="every bridge job to end", interval=0.2)

    client = bridge.redis
    allowed = documented_exceptions()
    seen: dict[str, int] = {}
    undocumented = []
    for key in client.scan_iter("*", count=1000):
        name = key.decode()
        ttl = client.ttl(key)
        family = re.sub(r"[0-9a-f]{24}|[0-9A-Za-z_-]{26,}", "<id>", name)
        seen[family] = seen.get(family, 0) + 1
        if ttl == -1 and not any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed):
            undocumented.append(name)
    assert any(f.startswith("workfloo:exec:") for f in seen), seen  # the flows really wrote state
    assert any(f.startswith("rq:results:") for f in seen), seen
    assert client.zcard(f"rq:failed:{bridge.settings.bridge_queue}") >= 1  # the dead letter is there
    assert undocumented == [], f"keys without a TTL, not in {DOC.name}: {sorted(undocumented)}"
