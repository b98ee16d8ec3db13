"""Duplicate and reorder storm: Kiban's callbacks for a batch of applications are captured, then each is
delivered 1-5 times, shuffled, across concurrent connections. Effects happen exactly once: one business
application per approved execution, one callback.received per distinct delivery, and no effect event
(application.started, nip.validated, workfloo.completed/failed/abandoned, kompliant.workflow.*) twice
for one execution in the stream."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.resilience_stack import ONCE_PER_EXECUTION, bridge_stack
from workers.sandbox.serving import ServerThread
from workers.sandbox.wait import wait_until

# nip-error is left out: its resend needs the bridge to see the ERROR callback while the flow runs, and
# here every callback is held back until the flow has ended.
SCENARIOS = ["approved"] * 6 + ["rejected"] * 2 + ["abandoned"]
FORWARDED = ("x-api-key", "xapikeycallback", "x-kiban-event-id", "x-kiban-event-type", "content-type")


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Recorder:
    """Plays the bridge's public URL for Kiban: records each callback and answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        headers = tuple((k, v) for k, v in request.headers.items() if k.lower() in FORWARDED)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        with self.lock:
            self.deliveries.append(Delivery(path, headers, body))
        return Response(b'{"status":"accepted"}', media_type="application/json")


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, ServerThread]]:
    recording = Recorder()
    app = Starlette(routes=[Route("/{path:path}", recording.receive, methods=["POST"])])
    with ServerThread(app) as server:
        yield recording, server


def test_duplicate_and_reorder_storm(
    tmp_path: Path, figures: Any, recorder: tuple[Recorder, ServerThread]
) -> None:
    recording, sink = recorder
    section = "storm"
    rng = random.Random(20261122)
    with bridge_stack(tmp_path, callback_base=sink.url) as bridge:
        bridge.start_worker("w-0")
        bridge.start_worker("w-1")
        scenarios = [SCENARIOS[i % len(SCENARIOS)] for i in range(30)]
        executions = bridge.start_applications(scenarios, timeout=120)
        bridge.validate_all(executions, timeout=120)
        fake = bridge.kiban.server.config.app.state.fake
        wait_until(
            lambda: all(fake.execution(e).status in {"SUCCESS", "ERROR", "ABANDONED"} for e in executions),
            timeout=60,
            what="every execution to end at the fake Kiban",
        )
        assert fake.wait_idle(30), "the fake Kiban still has callbacks to send"
        captured = list(recording.deliveries)
        assert captured, "no callback was captured"

        storm = [d for d in captured for _ in range(rng.randint(1, 5))]
        rng.shuffle(storm)
        answers: Counter[str] = Counter()
        lock = threading.Lock()
        local = threading.local()

        def send(delivery: Delivery) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=bridge.receiver.url, timeout=30)
            response = local.client.post(delivery.path, content=delivery.body, headers=dict(delivery.headers))
            key = (
                response.json().get("status", "?")
                if response.status_code == 200
                else str(response.status_code)
            )
            with lock:
                answers[key] += 1

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(send, storm))

        assert set(answers) <= {"accepted", "duplicate"}, answers
        bridge.wait_done(executions, 180, "every application after the storm")
        processed = bridge.wait_callbacks_processed(60)

        received = [e for t, e, _ in bridge.stream() if t == "callback.received"]
        stream = bridge.stream()
        counts = bridge.applications_by_referrer()

    # Each distinct delivery was accepted exactly once and processed exactly once.
    assert answers["accepted"] == len(set(captured)), (answers, len(set(captured)))
    assert answers["accepted"] + answers["duplicate"] == len(storm)
    assert processed == answers["accepted"]
    assert len(received) == answers["accepted"], "callback.received count differs from accepted deliveries"
    for execution_id in executions:
        expected = 1 if bridge.scenario_of[execution_id] == "approved" else 0
        assert counts.get(execution_id, 0) == expected, (execution_id, bridge.scenario_of[execution_id])
    effects = [(t, e) for t, e, _ in stream if t in ONCE_PER_EXECUTION]
    duplicated = sorted({x for x in effects if effects.count(x) > 1})
    assert not duplicated, f"effect events published twice: {duplicated[:5]}"
    terminal = Counter(t for t, _ in effects if t.startswith("workfloo."))

    figures.add("applications", len(executions), section)
    figures.add("distinct callbacks captured", len(set(captured)), section)
    figures.add("deliveries sent (1-5 copies each, shuffled, 8 connections)", len(storm), section)
    figures.add("answered accepted / duplicate", f"{answers['accepted']} / {answers['duplicate']}", section)
    figures.add("effect events (once per execution)", len(effects), section)
    figures.add("terminal events", " ".join(f"{k}:{v}" for k, v in sorted(terminal.items())), section)
    figures.add("duplicated effects", len(duplicated), section)
