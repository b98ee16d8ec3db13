"""Redis restart under load: a steady stream of distinct callbacks while Redis (AOF on) is stopped, left
down for a while and started again on the same port and data directory.

Promise checked: no 200 for an event that was not stored. While Redis is gone the answer is 503 with
Retry-After (or a connection error); after it is back every callback that got 200 has its RQ job and its
dedupe key, and re-sending every refused one is answered 200 (accepted, or duplicate when Redis ran the
script but the reply missed the intake timeout)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.support.resilience_helpers import AUTH, receiver_settings
from workers.core import keys
from workers.core.contract import nip_event_id
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import ServerThread

EXECUTION_ID = "657118e1d511b6e54fe2a969"
PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
SENDERS = 4


@dataclass
class Answer:
    event_id: str
    body: dict[str, str]
    sent: float
    done: float
    status: int | None  # None: connection error / timeout
    retry_after: str | None
    error: str | None


class Load:
    """``SENDERS`` threads, each posting distinct NIP callbacks back to back (a short pause between)."""

    def __init__(self, base_url: str, pause: float = 0.005) -> None:
        self.base_url = base_url
        self.pause = pause
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(SENDERS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, sender: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5, headers=AUTH) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {"event": "SENT", "date": f"2026-11-22T23:00:00.{sender}-{n:06d}Z"}
                event_id = nip_event_id(EXECUTION_ID, body["event"], body["date"])
                sent = time.monotonic()
                try:
                    response = client.post(PATH, json=body)
                    answer = Answer(
                        event_id, body, sent, time.monotonic(), response.status_code,
                        response.headers.get("retry-after"), None,
                    )  # fmt: skip
                    if response.status_code == 200:
                        assert response.json()["event_id"] == event_id
                except httpx.HTTPError as exc:
                    answer = Answer(event_id, body, sent, time.monotonic(), None, None, type(exc).__name__)
                with self._lock:
                    self.answers.append(answer)
                time.sleep(self.pause)


def _outage(
    serve_receiver: Callable[..., ServerThread],
    server: RedisServer,
    figures: Any,
    *,
    restarts: int,
    down_for: float,
    modes: tuple[str, ...] = ("SIGTERM",),
) -> None:
    """``modes`` cycles through the ways Redis goes away: SIGTERM (Redis flushes its AOF and exits),
    SIGKILL (a crash: with appendfsync everysec the AOF is written before each reply, so only an OS crash
    could lose the last second, not a process crash), SIGSTOP (frozen, then SIGCONT: commands sent while
    frozen run late, after the receiver already answered 503)."""
    app_server = serve_receiver(receiver_settings(server.url))
    windows: list[tuple[float, float]] = []
    with Load(app_server.url) as load:
        time.sleep(1.0)
        for n in range(restarts):
            mode = modes[n % len(modes)]
            if mode == "SIGSTOP":
                assert server.process is not None
                server.process.send_signal(signal.SIGSTOP)
            else:
                server.stop(kill=mode == "SIGKILL")
            gone = time.monotonic()
            time.sleep(down_for)
            back = time.monotonic()
            if mode == "SIGSTOP":
                assert server.process is not None
                server.process.send_signal(signal.SIGCONT)
            else:
                server.start()
            windows.append((gone, back))
            time.sleep(1.5)
    answers = load.answers

    def during_outage(a: Answer) -> bool:
        return any(gone <= a.sent and a.done <= back for gone, back in windows)

    down = [a for a in answers if during_outage(a)]
    acked = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]

    # 1. While Redis was gone: 503 with Retry-After, or a connection error. Never 200, never another 5xx.
    assert down, "the load generator sent nothing while Redis was down"
    wrong = [a for a in down if not (a.status is None or (a.status == 503 and a.retry_after))]
    assert not wrong, f"answers while Redis was down that are not 503+Retry-After: {wrong[:3]}"
    assert all(a.status in (200, 503, None) for a in answers), Counter(a.status for a in answers)

    # 2. Nothing acknowledged is missing: every 200 has its RQ job and dedupe key.
    check = redis.Redis.from_url(server.url)
    try:
        pipe = check.pipeline(transaction=False)
        for a in acked:
            pipe.exists(keys.dedupe(a.event_id), f"rq:job:{a.event_id}")
        found = pipe.execute()
        missing = [a.event_id for a, n in zip(acked, found, strict=True) if n != 2]
        assert not missing, f"{len(missing)} acknowledged callbacks lost: {missing[:5]}"
        queued = {e.decode() for e in check.lrange("rq:queue:workfloo", 0, -1)}
        assert {a.event_id for a in acked} <= queued, "an acknowledged job is not on the queue"

        # 3. Re-send every refused callback: 200 accepted, or duplicate if it was stored after all.
        resent: Counter[str] = Counter()
        with httpx.Client(base_url=app_server.url, timeout=10, headers=AUTH) as client:
            for a in refused:
                response = client.post(PATH, json=a.body)
                assert response.status_code == 200, response.text
                resent[response.json()["status"]] += 1
        jobs = sum(1 for _ in check.scan_iter("rq:job:nip-*", count=1000))
        assert jobs == len({a.event_id for a in answers}), "jobs and distinct callbacks differ"
    finally:
        check.close()

    during = Counter("conn-error" if a.status is None else str(a.status) for a in down)
    total = Counter("conn-error" if a.status is None else str(a.status) for a in answers)
    section = f"redis outage ({'/'.join(modes)})"
    figures.add("restarts", restarts, section)
    figures.add("outage length s (each)", down_for, section)
    figures.add("callbacks sent", len(answers), section)
    figures.add("answered 200", len(acked), section)
    figures.add("during outage", len(down), section)
    figures.add("during outage answered", " ".join(f"{k}:{v}" for k, v in sorted(during.items())), section)
    figures.add("all answers", " ".join(f"{k}:{v}" for k, v in sorted(total.items())), section)
    figures.add("acknowledged and missing", 0, section)
    figures.add("refused, re-sent: accepted", resent["accepted"], section)
    figures.add("refused, re-sent: duplicate (stored, reply lost)", resent["duplicate"], section)


@pytest.mark.parametrize("mode", ["SIGTERM", "SIGKILL", "SIGSTOP"])
def test_redis_restart_under_load(
    serve_receiver: Callable[..., ServerThread], private_redis: RedisServer, figures: Any, mode: str
) -> None:
    _outage(serve_receiver, private_redis, figures, restarts=1, down_for=1.5, modes=(mode,))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_redis_restarts_under_load_repeatedly(
    serve_receiver: Callable[..., ServerThread], private_redis: RedisServer, figures: Any
) -> None:
    _outage(
        serve_receiver,
        private_redis,
        figures,
        restarts=6,
        down_for=3.0,
        modes=("SIGTERM", "SIGKILL", "SIGSTOP"),
    )
