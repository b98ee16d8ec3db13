"""`workfloo-bridge demo` end to end, as a user runs it: a separate process, real children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import ROOT
from workers.sandbox.demo.runner import READY_LINE
from workers.sandbox.supervisor import pid_alive
from workers.sandbox.wait import holds_within

_ENV_PREFIXES = ("REDIS_", "BRIDGE_", "KIBAN_", "KOMPLIANT_", "EVENTS_", "LOG_")


def _clean_env() -> dict[str, str]:
    """A fresh clone has no settings: drop any the test runner may carry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env["COLUMNS"] = "160"
    return env


def _demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "workers.ops.cli", "demo", *args]


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    holds_within(lambda: not any(pid_alive(pid) for pid in pids), timeout, interval=0.1)
    return [pid for pid in pids if pid_alive(pid)]


def test_demo_runs_every_scenario_to_its_expected_outcome(tmp_path: Path) -> None:
    result = subprocess.run(
        _demo("--applications", "4", "--json", "--log-dir", str(tmp_path / "logs")),
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    apps = {a["scenario"]: a for a in summary["applications"]}
    assert set(apps) == {"approved", "rejected", "nip-error", "duplicate-storm"}
    assert all(a["ok"] and a["outcome"] == a["expected"] for a in apps.values())
    assert apps["approved"]["events"].count("kompliant.workflow.started") == 1
    assert "kompliant.workflow.created" not in apps["rejected"]["events"]
    assert {"nip.failed", "nip.resent"} <= set(apps["nip-error"]["events"])
    storm = apps["duplicate-storm"]["storm"]
    assert storm["sent"] > 1 and storm["duplicates"] >= storm["sent"] - 1
    assert summary["duplicates_absorbed"] >= storm["sent"] - 1
    assert summary["events_published"] >= sum(len(a["events"]) for a in apps.values())
    # the human report (stderr when --json): timelines and the summary panel
    assert "demo passed" in result.stderr
    assert "4/4 as expected" in result.stderr
    assert "#1 approved" in result.stderr
    # child logs went to files, not to the terminal
    assert (tmp_path / "logs" / "receiver.log").exists()
    assert '"level"' not in result.stderr


def test_keep_running_then_sigint_leaves_nothing_running(tmp_path: Path) -> None:
    process = subprocess.Popen(
        _demo("--applications", "0", "--keep-running", "--workers", "1", "--log-dir", str(tmp_path)),
        cwd=ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    pids: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"\s*pids\s+([\d ]+)$", line)
            if match:
                pids = [int(p) for p in match.group(1).split()]
            if "curl -H" in line and "/timeline" in line:  # the last line of the keep-running notice
                break
        output = "".join(lines)
        assert READY_LINE in output, output
        assert "workfloo-bridge events tail --follow" in output
        assert len(pids) >= 5  # redis, 2 fakes, receiver, worker
        # every worker serves its Prometheus metrics, and the notice says where
        metrics = re.findall(r"^\s*worker metrics\s+(\S+)", output, re.M)
        assert len(metrics) == 1, output
        assert "bridge_metrics_redis_up 1.0" in httpx.get(metrics[0], timeout=5).text
        assert all(pid_alive(pid) for pid in pids)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    assert "stopping" in rest
    assert _wait_gone(pids) == []


def test_sigterm_during_startup_stops_what_was_started(tmp_path: Path) -> None:
    process = subprocess.Popen(
        _demo("--applications", "0", "--keep-running", "--workers", "1", "--log-dir", str(tmp_path)),
        cwd=ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # "process logs: <dir>" comes before anything is started
    assert first.startswith("process logs:")
    time.sleep(1.0)  # somewhere in the middle of starting children
    children = _children_of(process.pid)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode in (0, 130), rest
    assert _wait_gone(children + _children_of(process.pid)) == []


def _children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (they are in new sessions, so walk /proc by parent pid)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def test_demo_exits_1_and_says_why_when_an_outcome_is_wrong(tmp_path: Path) -> None:
    """A Kompliant secret the fake rejects: the hand-off dead-letters, the approved application is not."""
    import io

    from rich.console import Console

    from workers.sandbox.demo.runner import run_demo

    out = io.StringIO()
    code = run_demo(
        applications=1,
        workers=1,
        timeout=30,
        log_dir=tmp_path / "logs",
        console=Console(file=out, width=200),
        extra_env={"BRIDGE_KOMPLIANT_SECRET_KEY": "d3Jvbmcgc2VjcmV0IGtleSBmb3IgdGhlIGRlbW8h"},
    )
    text = out.getvalue()
    assert code == 1, text
    assert "demo FAILED" in text
    assert "0/1 as expected" in text
    assert "expected approved" in text
    assert "action.failed" in text
    assert "process logs kept in" in text


def test_ctrl_c_while_applications_are_in_flight(tmp_path: Path) -> None:
    process = subprocess.Popen(
        _demo("--applications", "4", "--workers", "1", "--log-dir", str(tmp_path)),
        cwd=ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("stack ready"):
                break
        children = _children_of(process.pid)
        assert children, "".join(seen)
        time.sleep(0.5)  # applications are being driven now
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, rest
    assert "Ctrl-C: stopping" in rest
    assert "applications when interrupted" in rest
    assert _wait_gone(children) == []
