"""Soak: the whole bridge as separate processes at a steady rate of applications for ``--minutes``;
reports the RSS of every process at the start (after a warm-up) and at the end, plus throughput and
backlog. Not part of CI.

    python -m bench.soak --minutes 30 --rate 2

Processes: redis-server (AOF everysec), fake Kiban and fake Kompliant (``python -m workers.sandbox.fakes.*``),
the receiver (``workfloo-bridge serve``) and ``--workers`` workers (``workfloo-bridge worker``). Each
application goes through the receiver's command API (POST /v1/applications, then the NIP), Kiban's
callbacks come back to the receiver, the workers hand approved applicants to Kompliant.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque

import httpx
import psutil
import redis

from workers.jobs import api as commands_api
from workers.sandbox.stack import Stack, StackConfig, StackKeys

CALLBACK_KEY = "cb-3b5002185576d4177a6f1ac5dcbfbdc309a265f1"
INTERNAL_KEY = "in-1b763f17cf362e21c4775983c892c4baf36591b2"
KIBAN_KEY = "soak-kiban-key-0123456789"
TERMINAL = {"workfloo.completed", "workfloo.failed", "workfloo.abandoned"}
SCENARIOS = ["approved", "approved", "approved", "rejected", "abandoned"]


def _rss(pid: int) -> int:
    """RSS of a process and its children (uvicorn and the workers may fork)."""
    try:
        proc = psutil.Process(pid)
        return int(proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True)))
    except psutil.Error:
        return 0


def _types(client: redis.Redis, execution_id: str) -> list[str]:
    return [json.loads(e)["type"] for e in client.lrange(f"workfloo:timeline:{execution_id}", 0, -1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2.0, help="applications started per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the start RSS is taken")
    args = parser.parse_args(argv)

    config = StackConfig(
        workers=0,
        scheduler=False,
        appendonly=True,
        keys=StackKeys(callback=CALLBACK_KEY, internal=INTERNAL_KEY, kiban=KIBAN_KEY),
        definition_id="def-soak",
        tuning={"BRIDGE_LOG_LEVEL": "WARNING"},
        decision_delay=0.2,
        nip_event_delay=0.05,
    )
    with Stack(config) as stack:
        for n in range(args.workers):
            stack.add_worker(f"soak-{n}")
        print(
            f"soak: {args.minutes} min at {args.rate}/s, {args.workers} workers; logs in {stack.log_dir}",
            flush=True,
        )
        assert stack.client is not None
        run(args, stack.client, stack.internal_url, stack.kiban_url, stack.pids())  # the command API


def run(
    args: argparse.Namespace, client: redis.Redis, receiver: str, kiban: str, pids: dict[str, int]
) -> None:
    http = httpx.Client(timeout=10, headers={"x-api-key": INTERNAL_KEY})
    started_at = time.monotonic()
    end_at = started_at + args.minutes * 60
    commands: deque[str] = deque()
    waiting_nip: deque[str] = deque()
    in_flight: set[str] = set()
    sent = done = refused = 0
    latencies: list[float] = []
    begun: dict[str, float] = {}
    scenario_of: dict[str, str] = {}
    rss_start: dict[str, int] | None = None
    next_start = started_at
    next_report = started_at + 60
    while True:
        now = time.monotonic()
        if now < end_at and now >= next_start:
            next_start += 1 / args.rate
            form = {
                "email": f"soak-{sent}-{int(now * 1000)}@example.com",
                "first_name": "Ana",
                "last_name_1": "Soak",
            }
            scenario = SCENARIOS[sent % len(SCENARIOS)]
            response = http.post(f"{receiver}/v1/applications", json={"form": form, "scenarioId": scenario})
            if response.status_code == 202:
                commands.append(response.json()["command_id"])
                begun[commands[-1]] = now
                scenario_of[commands[-1]] = scenario
                sent += 1
            else:
                refused += 1
        for _ in range(len(commands)):
            command = commands.popleft()
            result = commands_api.command_result(client, command)
            if result and isinstance(result.get("result"), dict):
                execution_id = str(result["result"]["execution_id"])
                begun[execution_id] = begun.pop(command)
                scenario_of[execution_id] = scenario_of.pop(command)
                waiting_nip.append(execution_id)
            else:
                commands.append(command)
        for _ in range(len(waiting_nip)):
            execution_id = waiting_nip.popleft()
            phase = httpx.get(f"{kiban}/_fake/executions/{execution_id}", timeout=10).json().get("phase")
            if phase in ("VALIDATE", "VALIDATE_2"):
                http.post(f"{receiver}/v1/applications/{execution_id}/nip", json={"nip": "123456"})
                in_flight.add(execution_id)
            else:
                waiting_nip.append(execution_id)
        for execution_id in list(in_flight):
            types = set(_types(client, execution_id))
            handed_off = "kompliant.workflow.started" in types or scenario_of[execution_id] != "approved"
            if TERMINAL & types and handed_off:
                in_flight.discard(execution_id)
                done += 1
                latencies.append(time.monotonic() - begun.pop(execution_id))
        if rss_start is None and now - started_at >= args.warmup:
            rss_start = {name: _rss(pid) for name, pid in pids.items()}
        if now >= next_report:
            next_report += 60
            print(f"soak: {int(now - started_at)} s, started {sent}, done {done}, in flight "
                  f"{len(commands) + len(waiting_nip) + len(in_flight)}", flush=True)  # fmt: skip
        if now >= end_at and not (commands or waiting_nip or in_flight):
            break
        if now >= end_at + 120:
            break
        time.sleep(0.05)
    stuck = [(scenario_of.get(e), _types(client, e)) for e in list(in_flight)[:3]]
    if commands or waiting_nip or in_flight or stuck:
        print(f"soak: unfinished: {len(commands)} awaiting start, {len(waiting_nip)} awaiting the NIP phase, "
              f"{len(in_flight)} awaiting the outcome; e.g. {stuck}")  # fmt: skip
    rss_end = {name: _rss(pid) for name, pid in pids.items()}
    rss_start = rss_start or rss_end
    elapsed = time.monotonic() - started_at
    latencies.sort()
    print(f"\nsoak: {elapsed:.0f} s; applications started {sent}, finished {done}, refused {refused}, "
          f"unfinished {sent - done}; queue length {client.llen('rq:queue:workfloo')}")  # fmt: skip
    if latencies:
        p50, p99 = (
            latencies[len(latencies) // 2],
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        )
        print(f"soak: application start -> done: p50 {p50:.2f} s, p99 {p99:.2f} s")
    print(f"\n{'process':<14} {'RSS start MiB':>14} {'RSS end MiB':>12} {'change':>8}")
    for name in pids:
        start, end = rss_start.get(name, 0) / 2**20, rss_end.get(name, 0) / 2**20
        change = f"{(end - start) / start * 100:+.1f}%" if start else "n/a"
        print(f"{name:<14} {start:>14.1f} {end:>12.1f} {change:>8}")


if __name__ == "__main__":
    main()
