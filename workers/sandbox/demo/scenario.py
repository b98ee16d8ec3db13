"""Drive applications through the real flow over HTTP and judge each one's outcome from its events.

Per application: start it through the bridge's command endpoint (execute + form + NIP send), wait for
the NIP delivery callbacks, validate the NIP in two steps (sandbox NIP ``123456``), let the fake Kiban
run the bureau query and the decision and post the end-of-workfloo callback, then watch the Kompliant
hand-off. The ``duplicate-storm`` application also re-posts its end-of-workfloo callback many times
concurrently and checks that the bridge absorbed every copy (one effect only).

Progress comes from the application's timeline in Redis (the publisher's per-execution list), read
every ~100 ms; the final timeline is fetched through ``GET /v1/applications/{id}/timeline``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import orjson
import redis

from workers.core import keys
from workers.core.contract import JOB_SERIALIZER
from workers.core.timeline import MAX_TIMELINE_EVENTS, build_timeline
from workers.sandbox.demo.model import KIBAN_SCENARIO, AppRun
from workers.sandbox.stack import Stack
from workers.sandbox.wait import WaitTimeout, wait_until

SANDBOX_NIP = "123456"
STORM_COPIES = 40
POLL_SECONDS = 0.1

APPROVED_EVENT = "kompliant.workflow.started"
T = TypeVar("T")
TERMINAL_EVENTS = ("workfloo.completed", "workfloo.failed", "workfloo.abandoned")


class Stopped(Exception):
    """The run was interrupted or timed out while an application was in flight."""


def demo_form(index: int) -> dict[str, str]:
    """Made-up applicant data for the sandbox (no real person)."""
    return {
        "first_name": "Demo",
        "last_name_1": f"Applicant{index}",
        "email": f"demo.applicant{index}.{int(time.time() * 1000)}@example.com",
        "country_code": "52",
        "phone_number": f"55{index:08d}"[-10:],
    }


def _stage(types: Sequence[str]) -> str:
    """A short human label for how far an application got, from its event types."""
    seen = set(types)
    for event_type, label in (
        ("kompliant.workflow.started", "kompliant started"),
        ("kompliant.workflow.rejected", "kompliant rejected"),
        ("kompliant.workflow.conflict", "kompliant conflict"),
        ("kompliant.workflow.created", "kompliant created"),
        ("workfloo.completed", "workfloo completed"),
        ("workfloo.failed", "workfloo failed"),
        ("workfloo.abandoned", "abandoned"),
        ("nip.validated", "NIP validated"),
        ("nip.delivered", "NIP delivered"),
        ("nip.resent", "NIP resent"),
        ("nip.failed", "NIP failed"),
        ("nip.sent", "NIP sent"),
        ("nip.pending", "NIP pending"),
        ("application.started", "started"),
    ):
        if event_type in seen:
            return label
    return "starting" if not types else types[-1]


def judge(run: AppRun) -> tuple[str | None, list[str]]:
    """Outcome (``approved``/``rejected``/other) and failed scenario checks, from the events alone."""
    types = run.event_types()
    problems: list[str] = []
    outcome: str | None = None
    if APPROVED_EVENT in types:
        outcome = "approved"
    elif "kompliant.workflow.rejected" in types:
        outcome = "kompliant-rejected"
    elif "kompliant.workflow.conflict" in types:
        outcome = "kompliant-conflict"
    elif any(t in types for t in TERMINAL_EVENTS):
        terminal = next(e for e in run.events if e.get("type") in TERMINAL_EVENTS)
        data = terminal.get("data") or {}
        decision = str(data.get("decision") or data.get("outcome") or "").lower()
        if terminal.get("type") == "workfloo.abandoned":
            outcome = "abandoned"
        elif "approv" in decision:
            outcome = "approved-no-handoff"
        else:
            outcome = "rejected"
    for event in run.events:
        if event.get("type") == "action.failed":
            data = event.get("data") or {}
            problems.append(
                f"action.failed: {data.get('action', '?')}: {data.get('reason', 'no reason given')}"
            )
    for once in ("kompliant.workflow.created", "kompliant.workflow.started", *TERMINAL_EVENTS):
        if run.count(once) > 1:
            problems.append(f"{once} published {run.count(once)} times (expected once)")
    if run.scenario == "rejected" and "kompliant.workflow.created" in types:
        problems.append("a rejected application was handed to Kompliant")
    if run.scenario == "nip-error":
        if "nip.failed" not in types:
            problems.append("no nip.failed event for the failed first delivery")
        if "nip.resent" not in types:
            problems.append("the NIP was not resent")
    if run.scenario == "duplicate-storm" and run.storm_sent:
        if run.storm_accepted + run.storm_duplicates != run.storm_sent:
            problems.append(
                f"{run.storm_sent - run.storm_accepted - run.storm_duplicates} storm copies were not "
                "acknowledged with 200"
            )
        if run.storm_accepted > 1:
            problems.append(f"{run.storm_accepted} storm copies were accepted as new (at most 1 expected)")
    return outcome, problems


def _job_result(client: redis.Redis, job_id: str) -> tuple[Any, str | None]:
    """(return value, status) of an RQ job (a bridge command is one), (None, None) while unknown."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(job_id, connection=client, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        return None, None
    return job.return_value(), str(job.get_status(refresh=False))


class ScenarioRunner:
    """Runs every application concurrently (one thread each) against a started ``Stack``."""

    def __init__(self, stack: Stack, runs: Sequence[AppRun], *, timeout: float = 45.0) -> None:
        self.stack = stack
        self.runs = list(runs)
        self.timeout = timeout
        self.stop_event = threading.Event()
        self._deadline = time.monotonic() + timeout
        self._http = httpx.Client(base_url=stack.internal_url, timeout=10.0)  # commands, timeline, metrics
        self._public = httpx.Client(base_url=stack.receiver_url, timeout=10.0)  # Kiban's callbacks
        self._redis = stack.redis()
        self._stream = stack.env().get("BRIDGE_EVENTS_STREAM", "workfloo:events")
        self._stream_at_start = int(self._redis.xlen(self._stream))  # an existing Redis may hold old ones

    # -- bridge calls ------------------------------------------------------------------------

    def _internal_headers(self) -> dict[str, str]:
        return {"x-api-key": self.stack.keys.internal}

    def start_application(self, run: AppRun) -> str:
        """``POST /v1/applications`` (execute + form + NIP send as one command job), then the execution id
        from the command's result once a worker ran it."""
        body: dict[str, Any] = {"scenarioId": KIBAN_SCENARIO[run.scenario], "form": demo_form(run.index)}
        response = self._http.post("/v1/applications", json=body, headers=self._internal_headers())
        if response.status_code >= 300:
            raise RuntimeError(f"start failed: HTTP {response.status_code} {response.text[:200]}")
        command_id = str(response.json()["command_id"])
        run.stage = "start queued"

        def execution_id() -> str | None:
            value, status = _job_result(self._redis, command_id)
            if isinstance(value, dict) and value.get("execution_id"):
                return str(value["execution_id"])
            if status == "failed":
                raise RuntimeError(f"the start command {command_id} failed (see `workfloo-bridge dlq list`)")
            return None

        return str(self._poll(execution_id, f"the start command {command_id} to run"))

    def validate_nip(self, run: AppRun) -> None:
        """``POST /v1/applications/{id}/nip`` with the sandbox NIP (the bridge does both steps)."""
        response = self._http.post(
            f"/v1/applications/{run.execution_id}/nip",
            json={"nip": SANDBOX_NIP},
            headers=self._internal_headers(),
        )
        if response.status_code >= 300:
            raise RuntimeError(f"NIP validation failed: HTTP {response.status_code} {response.text[:200]}")

    def storm(self, run: AppRun, copies: int = STORM_COPIES) -> None:
        """Re-post the end-of-workfloo callback ``copies`` times at once; count what the receiver said."""
        url = f"/v1/kiban/executions/{run.execution_id}/finished"
        headers = {"x-api-key": self.stack.keys.callback}
        body = {"id": run.execution_id, "status": "SUCCESS"}
        barrier = threading.Barrier(min(copies, 16))

        def _one(_: int) -> str:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=2)
            response = self._public.post(url, json=body, headers=headers)
            if response.status_code != 200:
                return f"http-{response.status_code}"
            return str(response.json().get("status"))

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(_one, range(copies)))
        run.storm_sent = copies
        run.storm_accepted = answers.count("accepted")
        run.storm_duplicates = answers.count("duplicate")

    # -- observation -------------------------------------------------------------------------

    def refresh_events(self, run: AppRun) -> None:
        if not run.execution_id:
            return
        raw = self._redis.lrange(keys.timeline(run.execution_id), 0, MAX_TIMELINE_EVENTS - 1)
        run.events = build_timeline(run.execution_id, raw)["events"]
        if not run.done:
            run.stage = _stage(run.event_types())

    def fetch_timeline(self, run: AppRun) -> None:
        """Final timeline through the receiver's internal endpoint (falls back to Redis if it fails)."""
        if not run.execution_id:
            return
        try:
            response = self._http.get(
                f"/v1/applications/{run.execution_id}/timeline", headers=self._internal_headers()
            )
            if response.status_code == 200:
                run.events = response.json()["events"]
                return
        except httpx.HTTPError:
            pass
        self.refresh_events(run)

    def _poll(self, predicate: Callable[[], T], what: str, detail: Callable[[], str] = lambda: "") -> T:
        """``wait_until`` against the run's shared deadline; a stop request or the deadline is ``Stopped``."""

        def check() -> T:
            if self.stop_event.is_set():
                raise Stopped("interrupted")
            return predicate()

        remaining = max(0.0, self._deadline - time.monotonic())
        try:
            return wait_until(check, timeout=remaining, interval=POLL_SECONDS, what=what)
        except WaitTimeout:
            raise Stopped(f"timed out waiting for {what}{detail()}") from None

    def _wait_for(self, run: AppRun, predicate: Callable[[list[str]], bool], what: str) -> None:
        def seen() -> bool:
            self.refresh_events(run)
            return predicate(run.event_types())

        self._poll(seen, what, lambda: f" (last stage: {run.stage})")

    # -- one application ---------------------------------------------------------------------

    def drive(self, run: AppRun) -> None:
        try:
            run.stage = "starting"
            run.execution_id = self.start_application(run)
            run.stage = "started"
            self._wait_for(run, lambda t: "nip.delivered" in t, "the NIP delivery callback")
            run.stage = "validating NIP"
            self.validate_nip(run)
            self._wait_for(run, lambda t: any(e in t for e in TERMINAL_EVENTS), "the end of the workfloo")
            if run.scenario != "rejected":
                self._wait_for(
                    run,
                    lambda t: (
                        APPROVED_EVENT in t
                        or "kompliant.workflow.rejected" in t
                        or "kompliant.workflow.conflict" in t
                        or "action.failed" in t
                    ),
                    "the Kompliant hand-off",
                )
            if run.scenario == "duplicate-storm":
                run.stage = "duplicate storm"
                self.storm(run)
            self._settle(run)
            self.fetch_timeline(run)
            outcome, problems = judge(run)
            run.checks = problems
            run.finish(outcome)
        except Stopped as exc:
            self.refresh_events(run)
            outcome, _ = judge(run)
            run.finish(outcome, str(exc))
        except Exception as exc:
            self.refresh_events(run)
            run.finish(None, f"{type(exc).__name__}: {exc}")

    def _settle(self, run: AppRun, quiet_seconds: float = 0.3) -> None:
        """Wait until the timeline stops growing briefly, so late duplicates would show up in the count."""
        last = -1
        stable_since = time.monotonic()
        limit = time.monotonic() + 3.0
        while time.monotonic() < min(limit, self._deadline) and not self.stop_event.is_set():
            self.refresh_events(run)
            if len(run.events) != last:
                last = len(run.events)
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= quiet_seconds:
                return
            time.sleep(POLL_SECONDS)

    def run(self, on_tick: Callable[[], None] | None = None) -> None:
        """Drive all applications; ``on_tick`` is called every ~100 ms from this (the main) thread."""
        threads = [
            threading.Thread(target=self.drive, args=(run,), name=f"demo-app-{run.index}", daemon=True)
            for run in self.runs
        ]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                if on_tick is not None:
                    on_tick()
                time.sleep(POLL_SECONDS)
        except BaseException:
            self.stop_event.set()
            for thread in threads:
                thread.join(timeout=5)
            raise
        finally:
            if on_tick is not None:
                on_tick()

    def totals(self) -> tuple[int, int]:
        """(events added to the stream by this run, duplicate deliveries absorbed by the receiver)."""
        events = int(self._redis.xlen(self._stream)) - self._stream_at_start
        return events, self._duplicates_absorbed()

    def _duplicates_absorbed(self) -> int:
        """The receiver's duplicate counter from /metrics, or the storm's own count if there is none."""
        storm = sum(run.storm_duplicates for run in self.runs)
        try:
            text = self._http.get("/metrics").text
        except httpx.HTTPError:
            return storm
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.startswith("#") or "duplicate" not in line.split("{", 1)[0].split(" ", 1)[0]:
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name.endswith("_created"):
                continue
            try:
                total += float(line.rsplit(" ", 1)[1])
                found = True
            except (IndexError, ValueError):
                continue
        return int(total) if found else storm

    def close(self) -> None:
        self._http.close()
        self._public.close()
        self._redis.close()


def decode_json(raw: bytes) -> Any:
    return orjson.loads(raw)


__all__ = ["STORM_COPIES", "ScenarioRunner", "Stopped", "demo_form", "judge", "redis"]
