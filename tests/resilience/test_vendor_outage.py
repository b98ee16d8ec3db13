"""Vendor outage: the fake Kiban and Kompliant answer 503 / 429 with Retry-After, then slow down past the
client's read timeout, then recover (fault knobs set at run time through ``POST /_fake/faults``). All
work completes after the outage within the retry schedule, with exactly one business application per
approved execution, and every retry after an answer carrying Retry-After waited at least that long: read
from the workers' own retry records (``job_retry`` log lines: attempt, delay, reason), not wall clocks."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from rq.registry import FailedJobRegistry

from tests.support.resilience_stack import ONCE_PER_EXECUTION, Bridge, bridge_stack
from workers.core.contract import JOB_SERIALIZER

KIBAN_RETRY_AFTER = 1.0
KOMPLIANT_RETRY_AFTER = 2.0
PHASE_SECONDS = 2.5
SCENARIOS = ["approved"] * 4 + ["rejected"]


# RQ's job-start line without the description (the workers turn it off: it is the call with its arguments).
_JOB_START = re.compile(r"^Worker [^:]+: [^:\s]+: ([^()\s]+)$")


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()


def _retries(bridge: Bridge) -> list[dict[str, Any]]:
    """The workers' ``job_retry`` records, each with the job it belongs to (from RQ's job-start line
    before it in the same worker's log) and ``waited``: seconds until that job next started."""
    records: list[dict[str, Any]] = []
    starts: dict[str, list[float]] = {}
    for proc in bridge.procs:
        current = None
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("logger") == "rq.worker" and (match := _JOB_START.match(str(record["event"]))):
                current = match.group(1)
                starts.setdefault(current, []).append(_ts(record))
            elif record.get("event") == "job_retry":
                record["job_id"] = current
                records.append(record)
    for record in records:
        later = [t for t in starts.get(str(record["job_id"]), []) if t > _ts(record)]
        record["waited"] = min(later) - _ts(record) if later else None
    return records


def _outage(bridge: Bridge, timeline: list[tuple[float, str]], kiban_down: threading.Event) -> None:
    """Kompliant 503 then 429 (Retry-After 2), then Kiban 503 then 429 (Retry-After 1), then both slower
    than the client's read timeout; then everything recovers. (The hand-off asks Kiban for the status
    before it calls Kompliant, so the Kompliant phases come first, while Kiban answers.)"""
    started = time.monotonic()
    ra_k, ra_p = str(int(KIBAN_RETRY_AFTER)), str(int(KOMPLIANT_RETRY_AFTER))
    fail = 10**6
    phases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("kompliant 503", {}, {"fail_next": fail, "fail_status": 503, "fail_retry_after": ra_p}),
        ("kompliant 429", {}, {"fail_next": fail, "fail_status": 429, "fail_retry_after": ra_p}),
        ("kiban 503", {"fail_next": fail, "fail_status": 503, "fail_retry_after": ra_k}, {"fail_next": 0}),
        ("kiban 429", {"fail_next": fail, "fail_status": 429, "fail_retry_after": ra_k}, {}),
        ("both 1.5 s latency (read timeout 1 s)", {"fail_next": 0, "latency_ms": 1500}, {"latency_ms": 1500}),
    ]
    for name, kiban, kompliant in phases:
        if kiban:
            bridge.faults("kiban", **kiban)
        if kompliant:
            bridge.faults("kompliant", **kompliant)
        timeline.append((time.monotonic() - started, name))
        if name == "kiban 503":
            kiban_down.set()
        time.sleep(PHASE_SECONDS)
    bridge.reset_faults()
    timeline.append((time.monotonic() - started, "recovered"))


def test_vendor_outage_then_recovery(tmp_path: Path, figures: Any) -> None:
    section = "vendor outage"
    env = {"BRIDGE_VENDOR_READ_TIMEOUT_SECONDS": "1", "BRIDGE_RETRY_CAP_SECONDS": "1"}
    with bridge_stack(tmp_path, env) as bridge:
        bridge.start_worker("w-0")
        bridge.start_worker("w-1")
        # A first wave waits for its NIP when the outage starts: its hand-offs meet Kompliant's outage.
        # A second wave starts inside Kiban's outage.
        first = bridge.start_applications(SCENARIOS, timeout=60)
        bridge.wait_nip_phase(first)
        timeline: list[tuple[float, str]] = []
        kiban_down = threading.Event()
        outage = threading.Thread(target=_outage, args=(bridge, timeline, kiban_down), daemon=True)
        outage.start()
        bridge.validate_all(first, timeout=60)
        assert kiban_down.wait(30)
        second = bridge.start_applications(SCENARIOS * 2, timeout=120)
        bridge.validate_all(second, timeout=120)
        outage.join(timeout=60)
        recovered_at = time.monotonic()
        executions = first + second
        bridge.wait_done(executions, 180, "every application after the vendors recovered")
        after_recovery = time.monotonic() - recovered_at

        failed = FailedJobRegistry(
            bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER
        ).get_job_ids()
        assert not failed, f"jobs dead-lettered by the outage: {failed}"
        counts = bridge.applications_by_referrer()
        for execution_id in executions:
            expected = 1 if bridge.scenario_of[execution_id] == "approved" else 0
            assert counts.get(execution_id, 0) == expected, execution_id
        effects = [(t, e) for t, e, _ in bridge.stream() if t in ONCE_PER_EXECUTION]
        assert len(effects) == len(set(effects)), "an effect was published twice"
        assert not [t for t, _, _ in bridge.stream() if t == "action.failed"], "a job gave up"
        retries = _retries(bridge)

    by_kind: Counter[str] = Counter()
    floor_of = {"Kiban": KIBAN_RETRY_AFTER, "Kompliant": KOMPLIANT_RETRY_AFTER}
    below_floor = []
    waited_less = []
    shortest: dict[str, float] = {}
    shortest_waited: dict[str, float] = {}
    for retry in retries:
        reason = str(retry.get("reason", ""))
        vendor = (
            "Kiban"
            if reason.startswith("Kiban")
            else "Kompliant"
            if reason.startswith("Kompliant")
            else "other"
        )
        status = "503" if "http 503" in reason else "429" if "http 429" in reason else "timeout/other"
        kind = f"{vendor} {status}"
        by_kind[kind] += 1
        if status in ("503", "429") and vendor in floor_of:
            shortest[kind] = min(shortest.get(kind, 1e9), float(retry["delay"]))
            if float(retry["delay"]) < floor_of[vendor]:
                below_floor.append(retry)
            if retry["waited"] is not None:
                shortest_waited[kind] = min(shortest_waited.get(kind, 1e9), float(retry["waited"]))
                if retry["waited"] < floor_of[vendor]:
                    waited_less.append(retry)
    assert not below_floor, f"retries planned sooner than the vendor's Retry-After: {below_floor[:3]}"
    assert shortest_waited, "no retried job was seen starting again"
    assert not waited_less, (
        f"{len(waited_less)} retries started again sooner than the vendor's Retry-After: {waited_less[:3]}"
    )
    for kind in ("Kiban 503", "Kiban 429", "Kompliant 503", "Kompliant 429"):
        assert by_kind[kind] > 0, f"the outage produced no {kind} retry: {dict(by_kind)}"
    assert by_kind["Kiban timeout/other"] + by_kind["Kompliant timeout/other"] > 0, dict(by_kind)

    figures.add(
        "applications (approved)",
        f"{len(executions)} ({sum(1 for s in bridge.scenario_of.values() if s == 'approved')})",
        section,
    )
    figures.add("outage phases", "; ".join(f"{t:.1f}s {w}" for t, w in timeline), section)
    figures.add(
        "retries by cause",
        " ".join(f"{k.replace(' ', '-')}:{v}" for k, v in sorted(by_kind.items())),
        section,
    )
    figures.add(
        "shortest wait after Retry-After answer",
        " ".join(f"{k.replace(' ', '-')}:{v:.2f}s" for k, v in sorted(shortest.items())),
        section,
    )
    figures.add(
        "shortest actual wait (job restart) after Retry-After answer",
        " ".join(f"{k.replace(' ', '-')}:{v:.2f}s" for k, v in sorted(shortest_waited.items())),
        section,
    )
    figures.add(
        "retries planned / started sooner than Retry-After",
        f"{len(below_floor)} / {len(waited_less)}",
        section,
    )
    figures.add("all done s after recovery", after_recovery, section)
