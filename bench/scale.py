"""Scale-out proof on one machine: two receivers, up to four workers, one Redis, fake vendors as processes.

Everything runs as its own process on loopback, as in production: a private ``redis-server`` (AOF
everysec), the fake Kiban and fake Kompliant (``python -m workers.sandbox.fakes.…``), two receivers
(``workfloo-bridge serve``) and ``workfloo-bridge worker`` processes. Applications start through the
receivers' command endpoint (``POST /v1/applications``, alternating receivers). Worker *i* gives Kiban
receiver ``i % 2`` as its callback URL and the fake's end-of-workfloo callback goes to receiver B, so
callbacks arrive on both. A re-poster thread reads every callback the fake sent (``/_fake/deliveries``)
and POSTs a copy to the *other* receiver (same body and ``x-kiban-event-id``): duplicates across
receivers. The driver reads the bridge's event stream like an internal service would: on
``nip.delivered`` it sends the applicant's NIP (``POST /v1/applications/{id}/nip``).

Phases:

1. **Throughput** with 1, 2 and 4 worker processes (workers are added, never restarted) against fakes
   answering every vendor request after ``--latency-ms`` (100 ms). Each phase starts
   ``--apps-per-worker`` applications per worker at once and measures applications completed per
   second (first submit → last final event) and callbacks accepted per second. Ratios are against
   the 1-worker phase of the same run.
2. **Proof** with four workers: ``--proof-apps`` applications, the fake Kiban sending every callback
   twice (``duplicate_callbacks`` knob) on top of the cross-receiver copies, one worker SIGKILLed while it
   runs a job once 40 % are done.

Checks over every application of every phase: each acknowledged callback (a dedupe key = a ``200
accepted``) has a finished RQ job and a ``callback.received`` event; exactly one Kompliant business
application per approved execution and none for the others (``GET /_fake/workflows``); every application
has exactly its terminal event, and approved ones ``kompliant.workflow.created``/``started``; no effect
event twice; no dead letter, no ``action.failed``; every callback POST answered 200.

    python -m bench.scale [--apps-per-worker 20] [--proof-apps 200] [--latency-ms 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from workers.core.contract import JOB_SERIALIZER
from workers.sandbox.stack import Stack, StackConfig, StackKeys

BIN = Path(sys.executable).parent / "workfloo-bridge"
ROOT = Path(__file__).resolve().parent.parent
QUEUE = "workfloo"
STREAM = "workfloo:events"
CALLBACK_KEY = "cb-2f202458f113ae220a3abb408b3cd8873a0bd1ed"
INTERNAL_KEY = "in-f62537b4b989c04240332539c33d09159a9adb4d"
KIBAN_KEY = "scale-kiban-key"
DEFINITION = "def-scale"
NIP = "123456"

# scenario → the event that completes the application
DONE_EVENT = {
    "approved": "kompliant.workflow.started",
    "nip-error": "kompliant.workflow.started",
    "rejected": "workfloo.completed",
    "abandoned": "workfloo.abandoned",
    "error": "workfloo.failed",
}
APPROVED = {"approved", "nip-error"}
TERMINAL = {"workfloo.completed", "workfloo.failed", "workfloo.abandoned"}
EXPECTED_TERMINAL = {
    "approved": "workfloo.completed",
    "nip-error": "workfloo.completed",
    "rejected": "workfloo.completed",
    "abandoned": "workfloo.abandoned",
    "error": "workfloo.failed",
}
# Effect events that must appear at most once per execution (nip.pending/sent/failed/resent may repeat
# legitimately: one per delivery attempt).
ONCE_PER_EXECUTION = {
    "application.started",
    "nip.delivered",
    "nip.validated",
    *TERMINAL,
    "kompliant.workflow.created",
    "kompliant.workflow.started",
    "kompliant.workflow.rejected",
}
# 10 applications: 5 approved (one through a NIP resend), 2 rejected, 2 abandoned, 1 bureau error.
SCENARIO_MIX = [
    "approved",
    "rejected",
    "approved",
    "abandoned",
    "nip-error",
    "approved",
    "rejected",
    "error",
    "approved",
    "abandoned",
]

WORKER_ENV = {
    # Fast retries and crash detection, as in the end-to-end tests (production defaults are slower).
    "BRIDGE_RETRY_BASE_SECONDS": "0.05",
    "BRIDGE_RETRY_CAP_SECONDS": "0.5",
    "BRIDGE_NIP_RESEND_DELAY_SECONDS": "0.2",
    "BRIDGE_WORKER_HEARTBEAT_SECONDS": "1",
    "BRIDGE_WORKER_HEARTBEAT_GRACE_SECONDS": "2",
    "BRIDGE_REAPER_INTERVAL_SECONDS": "0.5",
    "BRIDGE_WORKER_TTL_SECONDS": "16",
    "BRIDGE_SCHEDULER_STALE_SECONDS": "3",
    "BRIDGE_HANDOFF_LOCK_TTL_SECONDS": "3",
}


@dataclass
class ScaleConfig:
    worker_counts: tuple[int, ...] = (1, 2, 4)
    apps_per_worker: int = 20
    proof_apps: int = 200
    proof_workers: int = 4
    latency_ms: float = 100.0
    proof_latency_ms: float = 10.0
    proof_duplicates: int = 2  # the fake Kiban's duplicate_callbacks knob in the proof phase (same receiver)
    kill: bool = True
    phase_timeout: float = 120.0
    decision_delay: float = 0.2
    nip_event_delay: float = 0.05
    log: Callable[[str], None] = print


@dataclass
class App:
    command_id: str
    scenario: str
    phase: str
    submitted_at: float
    execution_id: str | None = None
    done_at: float | None = None
    nip_sent: bool = False


@dataclass
class PhaseResult:
    name: str
    workers: int
    apps: int
    seconds: float
    callbacks: int  # accepted callbacks of the phase's applications (callback.received events)
    posts: int  # callback POSTs answered by the receivers during the phase (originals + cross copies)
    cpu_share: float  # CPU of every process of the run (and this driver) / (phase time x cores)
    jobs: int  # RQ jobs the workers finished during the phase
    busy_share: float  # workers' time inside jobs / (phase time x workers)
    job_durations: dict[str, tuple[int, float]] = field(default_factory=dict)  # function → (jobs, mean s)

    @property
    def job_seconds_per_app(self) -> float:
        """Worker time inside jobs per application: grows when workers wait on each other (locks, retries)."""
        return self.busy_share * self.seconds * self.workers / self.apps

    @property
    def apps_per_second(self) -> float:
        return self.apps / self.seconds

    @property
    def callbacks_per_second(self) -> float:
        return self.callbacks / self.seconds


@dataclass
class ScaleReport:
    phases: list[PhaseResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    applications: int = 0
    approved: int = 0
    business_applications: int = 0
    accepted_callbacks: int = 0
    accepted_by_receiver: dict[str, int] = field(default_factory=dict)
    duplicate_by_receiver: dict[str, int] = field(default_factory=dict)
    callback_posts: int = 0
    commands: int = 0
    fake_deliveries: int = 0
    cross_copies: int = 0
    cross_copies_accepted: int = 0
    cross_copies_duplicate: int = 0
    events: int = 0
    killed_worker: str | None = None
    killed_job: str | None = None
    killed_job_status: str | None = None
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


class ScaleCheckFailed(AssertionError):
    def __init__(self, report: ScaleReport, logdir: Path) -> None:
        super().__init__(
            f"{len(report.failures)} checks failed (process logs kept in {logdir}): {report.failures[:5]}"
        )
        self.report = report


# --- processes --------------------------------------------------------------------------------------


class ScaleStack(Stack):
    """Redis, both fakes, two receivers and the workers the phases add, each its own process group
    (log file per process, killed with the bench even if the bench itself is killed)."""

    def __init__(self, config: ScaleConfig) -> None:
        super().__init__(
            StackConfig(
                receivers=2,
                workers=0,
                scheduler=False,
                appendonly=True,
                keys=StackKeys(callback=CALLBACK_KEY, internal=INTERNAL_KEY, kiban=KIBAN_KEY),
                definition_id=DEFINITION,
                tuning={"BRIDGE_LOG_LEVEL": "WARNING", **WORKER_ENV},
                extra_env={"PYTHONPATH": str(ROOT)},
                decision_delay=config.decision_delay,
                nip_event_delay=config.nip_event_delay,
                end_callback_receiver=1,  # callbacks arrive on both receivers (see the module docstring)
                start_timeout=20,
                cwd=ROOT,
            )
        )
        self.workers: list[str] = []
        self._cpu_last: dict[str, float] = {}

    def grow(self) -> str:
        """One more ``workfloo-bridge worker``; worker i hands Kiban receiver i % 2 as its callback URL."""
        index = len(self.workers)
        name = f"scale-w{index}-{os.getpid()}"
        self.add_worker(name, env={"BRIDGE_PUBLIC_URL": self.receiver_urls[index % 2]}, wait=True)
        self.workers.append(name)
        return name

    def set_latency(self, ms: float) -> None:
        for which in ("kiban", "kompliant"):
            self.set_faults(which, latency_ms=ms)

    def cpu_seconds(self) -> dict[str, float]:
        """User+system CPU of each process (from /proc; a dead one keeps its last reading)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = self._cpu_last
        pids = {name: child.pid for name, child in self.children.items() if child.alive()}
        if self.redis_server is not None and self.redis_server.process is not None:
            pids["redis"] = self.redis_server.process.pid
        for name, pid in pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        return dict(out)

    def close(self, keep_logs: bool = False) -> None:
        self.stop()
        if not keep_logs:
            self.cleanup_logs()


# --- cross-receiver duplicates ----------------------------------------------------------------------


class Reposter(threading.Thread):
    """Re-POST every callback the fake Kiban delivered to the *other* receiver (same body and event id)."""

    def __init__(self, stack: ScaleStack) -> None:
        super().__init__(name="scale-reposter", daemon=True)
        self.stack = stack
        self.seen = 0
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()  # "accepted" / "duplicate" / "http-<code>"
        self.original_codes: Counter[int | None] = Counter()
        self.errors: list[str] = []

    def other(self, url: str) -> str | None:
        a, b = self.stack.receiver_urls
        if url.startswith(a):
            return b + url[len(a) :]
        if url.startswith(b):
            return a + url[len(b) :]
        return None

    def poll_once(self, client: httpx.Client) -> int:
        records = client.get(f"{self.stack.kiban_url}/_fake/deliveries", params={"since": self.seen}).json()
        for record in records:
            with self.lock:
                self.original_codes[record["status_code"]] += 1
            target = self.other(record["url"])
            if target is None or record["dropped"]:
                continue
            headers = {k: v for k, v in record["headers"].items() if "key" not in k.lower()}
            headers["x-api-key"] = CALLBACK_KEY
            try:
                response = client.post(target, json=record["body"], headers=headers)
                key = (
                    str(response.json().get("status"))
                    if response.status_code == 200
                    else f"http-{response.status_code}"
                )
            except httpx.HTTPError as exc:
                key = f"error-{type(exc).__name__}"
            with self.lock:
                self.statuses[key] += 1
        self.seen += len(records)
        return len(records)

    def run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self.stop_flag.is_set():
                try:
                    if self.poll_once(client) == 0:
                        time.sleep(0.05)
                except httpx.HTTPError as exc:  # the fake is restarting or gone at shutdown
                    self.errors.append(type(exc).__name__)
                    time.sleep(0.2)

    def catch_up(self, timeout: float = 20.0) -> None:
        """Wait until the fake has nothing left to send and every record was re-posted."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            seen = self.seen
            unread = httpx.get(f"{self.stack.kiban_url}/_fake/deliveries", params={"since": seen}).json()
            quiet = quiet + 1 if not unread and self.seen == seen else 0
            time.sleep(0.3)


# --- the driver --------------------------------------------------------------------------------------


class Driver:
    """Starts applications, answers NIP deliveries, and watches the stream for each one's last event."""

    def __init__(self, stack: ScaleStack) -> None:
        self.stack = stack
        self.apps: dict[str, App] = {}  # command id → app
        self.by_execution: dict[str, App] = {}
        self.pending_nip: set[str] = set()
        self.last_id = "0-0"
        self.client = httpx.Client(timeout=10.0, headers={"x-api-key": INTERNAL_KEY})
        self._round_robin = itertools.cycle(range(2))
        self.serial = itertools.count()
        self.callbacks_by_execution: Counter[str] = Counter()
        self.nip_commands: list[str] = []

    def receiver(self) -> str:
        """The internal listener of the next receiver (the command API)."""
        return self.stack.receiver_internal_urls[next(self._round_robin)]

    def submit(self, phase: str, count: int) -> list[App]:
        batch = []
        for _ in range(count):
            n = next(self.serial)
            scenario = SCENARIO_MIX[n % len(SCENARIO_MIX)]
            form = {
                "email": f"applicant{n}-{os.getpid()}@example.com",
                "first_name": "Ana",
                "last_name_1": "L",
            }
            response = self.client.post(
                f"{self.receiver()}/v1/applications", json={"form": form, "scenarioId": scenario}
            )
            if response.status_code != 202:
                raise RuntimeError(f"POST /v1/applications answered {response.status_code}: {response.text}")
            app = App(response.json()["command_id"], scenario, phase, time.monotonic())
            self.apps[app.command_id] = app
            batch.append(app)
        return batch

    def pump(self, block_ms: int = 100) -> None:
        reply = self.stack.client.xread({STREAM: self.last_id}, count=1000, block=block_ms)
        now = time.monotonic()
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id.decode()
                event = json.loads(fields[b"event"])
                self.on_event(event, now)
        for execution_id in list(self.pending_nip):
            response = self.client.post(
                f"{self.receiver()}/v1/applications/{execution_id}/nip", json={"nip": NIP}
            )
            if response.status_code != 202:
                raise RuntimeError(f"POST …/nip answered {response.status_code}: {response.text}")
            self.nip_commands.append(response.json()["command_id"])
            self.pending_nip.discard(execution_id)

    def on_event(self, event: dict[str, Any], now: float) -> None:
        execution_id = event.get("execution_id")
        kind = event["type"]
        if kind == "application.started":
            app = self.apps.get(str(event["data"].get("command_id")))
            if app is not None and execution_id:
                app.execution_id = execution_id
                self.by_execution[execution_id] = app
            return
        app = self.by_execution.get(str(execution_id))
        if app is None:
            return
        if kind == "callback.received":
            self.callbacks_by_execution[app.execution_id or ""] += 1
        elif kind == "nip.delivered" and not app.nip_sent:
            app.nip_sent = True
            self.pending_nip.add(str(execution_id))
        elif kind == DONE_EVENT[app.scenario] and app.done_at is None:
            app.done_at = now

    def run_until_done(
        self, batch: list[App], timeout: float, on_tick: Callable[[int], None] | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = sum(app.done_at is not None for app in batch)
            if done == len(batch):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(batch) - done} of {len(batch)} applications not done after {timeout}s"
                )
            if on_tick is not None:
                on_tick(done)
            self.pump()

    def wait_quiet(self, timeout: float = 30.0) -> None:
        """Queue empty, nothing started or scheduled, for half a second (duplicate triggers drained)."""
        connection = self.stack.client
        queue = Queue(QUEUE, connection=connection, serializer=JOB_SERIALIZER)
        registries = [
            StartedJobRegistry(QUEUE, connection=connection, serializer=JOB_SERIALIZER),
            ScheduledJobRegistry(QUEUE, connection=connection, serializer=JOB_SERIALIZER),
        ]
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            self.pump(block_ms=50)
            busy = queue.count + sum(r.count for r in registries)
            if busy == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.5:
                    return
            else:
                quiet_since = None
        raise TimeoutError(f"the queue did not drain within {timeout}s")

    def close(self) -> None:
        self.client.close()


# --- checks ------------------------------------------------------------------------------------------


def verify(stack: ScaleStack, driver: Driver, reposter: Reposter, report: ScaleReport) -> None:
    fail = report.failures.append
    conn = stack.client
    apps = list(driver.apps.values())
    report.applications = len(apps)
    report.approved = sum(app.scenario in APPROVED for app in apps)
    for app in apps:
        if app.execution_id is None or app.done_at is None:
            fail(f"application {app.command_id} ({app.scenario}) not completed")

    # 1. every acknowledged callback processed: dedupe key (= 200 accepted) → finished job + callback.received
    accepted = [
        key.decode().split(":", 2)[2]
        for key in conn.scan_iter(match="workfloo:dedupe:*", count=1000)
        if key.decode().split(":", 2)[2].split("-", 1)[0] in {"nip", "status", "finished"}
    ]
    report.accepted_callbacks = len(accepted)
    pipe = conn.pipeline(transaction=False)
    for event_id in accepted:
        pipe.hget(f"rq:job:{event_id}", "status")
    statuses = Counter((value or b"missing").decode() for value in pipe.execute())
    if set(statuses) != {"finished"}:
        fail(f"acknowledged callbacks whose job did not finish: {dict(statuses)}")

    # every acknowledged command (202 from POST /v1/applications and …/nip) ran to the end too
    commands = [app.command_id for app in apps] + driver.nip_commands
    pipe = conn.pipeline(transaction=False)
    for command_id in commands:
        pipe.hget(f"rq:job:{command_id}", "status")
    command_statuses = Counter((value or b"missing").decode() for value in pipe.execute())
    if set(command_statuses) != {"finished"}:
        fail(f"acknowledged commands whose job did not finish: {dict(command_statuses)}")
    report.commands = len(commands)

    entries = conn.xrange(STREAM)
    report.events = len(entries)
    events = [json.loads(fields[b"event"]) for _id, fields in entries]
    received_ids = Counter(e["data"].get("event_id") for e in events if e["type"] == "callback.received")
    missing = set(accepted) - set(received_ids)
    if missing:
        fail(f"{len(missing)} acknowledged callbacks without callback.received, e.g. {sorted(missing)[:3]}")
    repeated = [event_id for event_id, n in received_ids.items() if n > 1]
    if repeated:
        fail(f"callback.received twice for {len(repeated)} deliveries, e.g. {repeated[:3]}")
    for name, url in zip("AB", stack.receiver_internal_urls, strict=True):  # /metrics is internal
        report.accepted_by_receiver[name] = _metric_sum(url, "receiver_callbacks_accepted_total")
        report.duplicate_by_receiver[name] = _metric_sum(url, "receiver_callbacks_duplicate_total")
    if sum(report.accepted_by_receiver.values()) != len(accepted):
        fail(
            f"receivers counted {report.accepted_by_receiver} accepted, "
            f"Redis holds {len(accepted)} dedupe keys"
        )
    if min(report.accepted_by_receiver.values()) == 0:
        fail(f"a receiver accepted no callback: {report.accepted_by_receiver}")

    # every callback POST answered 200 (accepted or duplicate), originals and cross copies
    codes = reposter.original_codes
    if set(codes) - {200}:
        fail(f"fake Kiban's callbacks got answers other than 200: {dict(codes)}")
    report.fake_deliveries = sum(codes.values())
    report.callback_posts = report.fake_deliveries + sum(reposter.statuses.values())
    report.cross_copies = sum(reposter.statuses.values())
    report.cross_copies_accepted = reposter.statuses["accepted"]
    report.cross_copies_duplicate = reposter.statuses["duplicate"]
    if set(reposter.statuses) - {"accepted", "duplicate"}:
        fail(f"cross-receiver copies got other answers: {dict(reposter.statuses)}")

    # 2. exactly one business application per approved execution, none otherwise
    body = httpx.get(f"{stack.kompliant_url}/_fake/workflows").json()
    by_referrer: dict[str, int] = body["business_applications_by_referrer"]
    report.business_applications = sum(by_referrer.values())
    known = {app.execution_id for app in apps}
    for app in apps:
        want = 1 if app.scenario in APPROVED else 0
        got = by_referrer.get(str(app.execution_id), 0)
        if got != want:
            fail(f"{app.execution_id} ({app.scenario}): {got} business applications, expected {want}")
    stray = set(by_referrer) - known
    if stray:
        fail(f"business applications for unknown executions: {sorted(stray)[:3]}")

    # 3. the stream is complete and has no duplicate effect events
    types: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        types[str(event.get("execution_id"))][event["type"]] += 1
    for app in apps:
        seen = types.get(str(app.execution_id), Counter())
        terminal = {t: n for t, n in seen.items() if t in TERMINAL}
        if terminal != {EXPECTED_TERMINAL[app.scenario]: 1}:
            fail(f"{app.execution_id} ({app.scenario}): terminal events {terminal}")
        for kind in ("kompliant.workflow.created", "kompliant.workflow.started"):
            want = 1 if app.scenario in APPROVED else 0
            if seen[kind] != want:
                fail(f"{app.execution_id} ({app.scenario}): {seen[kind]} x {kind}, expected {want}")
        twice = {t: n for t, n in seen.items() if t in ONCE_PER_EXECUTION and n > 1}
        if twice:
            fail(f"{app.execution_id} ({app.scenario}): duplicate effect events {twice}")
    failed_actions = [e for e in events if e["type"] == "action.failed"]
    if failed_actions:
        fail(f"{len(failed_actions)} action.failed events, e.g. {failed_actions[0]['data']}")
    dead = FailedJobRegistry(QUEUE, connection=conn, serializer=JOB_SERIALIZER).get_job_ids()
    if dead:
        fail(f"{len(dead)} dead letters, e.g. {dead[:3]}")

    # the killed worker's job ran to the end on another worker
    if report.killed_job is not None:
        try:
            report.killed_job_status = str(
                Job.fetch(report.killed_job, connection=conn, serializer=JOB_SERIALIZER).get_status()
            )
        except Exception as exc:  # reported as a failure below
            report.killed_job_status = f"unreadable: {exc}"
        if report.killed_job_status not in {"finished", "JobStatus.FINISHED"}:
            fail(f"the killed worker's job {report.killed_job} is {report.killed_job_status}")


def _metric_sum(base_url: str, name: str) -> int:
    """Sum of one Prometheus counter over its labels, from a receiver's ``/metrics``."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _total_cpu(stack: ScaleStack) -> float:
    own = os.times()
    return sum(stack.cpu_seconds().values()) + own.user + own.system


def _job_durations(stack: ScaleStack, seen: set[str]) -> dict[str, tuple[int, float]]:
    """Mean run time per job function of the finished jobs not in ``seen`` (which is updated)."""
    registry = FinishedJobRegistry(QUEUE, connection=stack.client, serializer=JOB_SERIALIZER)
    new = [job_id for job_id in registry.get_job_ids() if job_id not in seen]
    seen.update(new)
    times: dict[str, list[float]] = defaultdict(list)
    for job in Job.fetch_many(new, connection=stack.client, serializer=JOB_SERIALIZER):
        if job is not None and job.started_at and job.ended_at:
            name = (job.func_name or "?").rsplit(".", 1)[-1]
            times[name].append((job.ended_at - job.started_at).total_seconds())
    return {name: (len(v), sum(v) / len(v)) for name, v in sorted(times.items())}


def _worker_totals(stack: ScaleStack) -> tuple[int, float]:
    """(jobs finished, seconds inside jobs) summed over this run's live workers (RQ's worker counters)."""
    jobs, seconds = 0, 0.0
    for worker in Worker.all(connection=stack.client):
        if worker.name in stack.workers:
            jobs += worker.successful_job_count + worker.failed_job_count
            seconds += worker.total_working_time
    return jobs, seconds


def _measure(
    name: str,
    workers: int,
    batch: list[App],
    driver: Driver,
    posts: int,
    cpu_seconds: float,
    work: tuple[int, float],
) -> PhaseResult:
    start = min(app.submitted_at for app in batch)
    done = sorted(app.done_at or start for app in batch)
    seconds = done[-1] - start
    callbacks = sum(driver.callbacks_by_execution[app.execution_id or ""] for app in batch)
    share = cpu_seconds / (seconds * (os.cpu_count() or 1))
    busy = work[1] / (seconds * workers)
    return PhaseResult(name, workers, len(batch), seconds, callbacks, posts, share, work[0], busy)


# --- orchestration -----------------------------------------------------------------------------------


def _busy_job(stack: ScaleStack, names: list[str]) -> tuple[str, str] | None:
    for worker in Worker.all(connection=stack.client):
        if worker.name in names:
            job_id = worker.get_current_job_id()
            if job_id:
                return worker.name, job_id
    return None


@contextmanager
def running_stack(config: ScaleConfig) -> Iterator[tuple[ScaleStack, Driver, Reposter]]:
    stack = ScaleStack(config)
    reposter: Reposter | None = None
    driver: Driver | None = None
    keep_logs = True
    try:
        stack.start()
        reposter = Reposter(stack)
        reposter.start()
        driver = Driver(stack)
        yield stack, driver, reposter
        keep_logs = False
    finally:
        if reposter is not None:
            reposter.stop_flag.set()
            reposter.join(timeout=10)
        if driver is not None:
            driver.close()
        stack.close(keep_logs=keep_logs)


def run(config: ScaleConfig) -> ScaleReport:
    report = ScaleReport()
    log = config.log
    with running_stack(config) as (stack, driver, reposter):
        receivers = ", ".join(stack.receiver_urls)
        log(f"stack up: redis {stack.redis_url}, receivers {receivers}, logs in {stack.log_dir}")
        stack.set_latency(config.latency_ms)
        finished_seen: set[str] = set()
        for count in config.worker_counts:
            while len(stack.workers) < count:
                stack.grow()
            apps = config.apps_per_worker * count
            posts_before = reposter.seen + sum(reposter.statuses.values())
            cpu_before, work_before = _total_cpu(stack), _worker_totals(stack)
            batch = driver.submit(f"throughput-{count}", apps)
            driver.run_until_done(batch, config.phase_timeout)
            posts = reposter.seen + sum(reposter.statuses.values()) - posts_before
            work_after = _worker_totals(stack)
            work = (work_after[0] - work_before[0], work_after[1] - work_before[1])
            cpu = _total_cpu(stack) - cpu_before
            result = _measure(f"throughput-{count}", count, batch, driver, posts, cpu, work)
            driver.wait_quiet()
            result.job_durations = _job_durations(stack, finished_seen)
            report.phases.append(result)
            log(
                f"  {count} worker(s): {apps} applications in {result.seconds:.1f} s = "
                f"{result.apps_per_second:.2f} apps/s, {result.callbacks_per_second:.1f} callbacks/s, "
                f"workers busy {result.busy_share:.0%}, CPU {result.cpu_share:.0%} of the cores"
            )
            driver.wait_quiet()
        if config.proof_apps:
            stack.set_latency(config.proof_latency_ms)
            httpx.post(
                f"{stack.kiban_url}/_fake/faults", json={"duplicate_callbacks": config.proof_duplicates}
            ).raise_for_status()
            while len(stack.workers) < config.proof_workers:
                stack.grow()
            live = list(stack.workers)
            kill_at = int(config.proof_apps * 0.4) if config.kill else None

            def maybe_kill(done: int) -> None:
                if kill_at is None or report.killed_worker is not None or done < kill_at:
                    return
                busy = _busy_job(stack, live)
                if busy is not None:
                    report.killed_worker, report.killed_job = busy
                    stack.kill(stack.children[busy[0]])
                    log(f"  SIGKILL {busy[0]} while it ran {busy[1]} ({done} of {config.proof_apps} done)")

            cpu_before = _total_cpu(stack)
            batch = driver.submit("proof", config.proof_apps)
            driver.run_until_done(batch, config.phase_timeout, on_tick=maybe_kill)
            survivors = len(live) - (1 if report.killed_worker else 0)
            result = _measure("proof", survivors, batch, driver, 0, _total_cpu(stack) - cpu_before, (0, 0.0))
            report.phases.append(result)
            log(
                f"  proof: {len(batch)} applications in {result.seconds:.1f} s "
                f"({result.apps_per_second:.2f} apps/s, {result.callbacks_per_second:.1f} callbacks/s, "
                f"CPU {result.cpu_share:.0%} of the cores) with a worker killed"
            )
            if config.kill and report.killed_worker is None:
                report.failures.append("no worker was busy when the kill was due: nothing was killed")
        driver.wait_quiet()
        reposter.catch_up()
        driver.wait_quiet()
        report.cpu_seconds = stack.cpu_seconds()
        verify(stack, driver, reposter, report)
        if not report.ok:
            raise ScaleCheckFailed(report, stack.log_dir)
    return report


def print_report(report: ScaleReport, config: ScaleConfig) -> None:
    throughput = [p for p in report.phases if p.name.startswith("throughput")]
    if throughput:
        base = throughput[0]
        print(
            f"\nthroughput, fake vendors at {config.latency_ms:.0f} ms per request, {os.cpu_count()} cores:"
        )
        print(
            f"{'workers':>8} {'apps':>5} {'seconds':>8} {'apps/s':>7} {'ratio':>6} {'callbacks/s':>12} "
            f"{'ratio':>6} {'jobs/s':>7} {'busy':>5} {'job s/app':>9} {'CPU':>5}"
        )
        for p in throughput:
            print(
                f"{p.workers:>8} {p.apps:>5} {p.seconds:>8.1f} {p.apps_per_second:>7.2f} "
                f"{p.apps_per_second / base.apps_per_second:>5.2f}x "
                f"{p.callbacks_per_second:>12.1f} "
                f"{p.callbacks_per_second / base.callbacks_per_second:>5.2f}x {p.jobs / p.seconds:>7.1f} "
                f"{p.busy_share:>5.0%} {p.job_seconds_per_app:>9.2f} {p.cpu_share:>5.0%}"
            )
        names = sorted({name for p in throughput for name in p.job_durations})
        print("\nmean job run time in ms (jobs) per worker count:")
        for name in names:
            cells = []
            for p in throughput:
                n, mean = p.job_durations.get(name, (0, 0.0))
                cells.append(f"{p.workers}: {mean * 1000:6.0f} ({n:>3})")
            print(f"  {name:<18} " + "   ".join(cells))
    print(
        f"\napplications {report.applications} ({report.approved} approved), "
        f"business applications {report.business_applications}, events {report.events}, "
        f"commands {report.commands} (all finished: {not any('commands' in f for f in report.failures)})"
    )
    print(
        f"callback POSTs {report.callback_posts}: {report.fake_deliveries} from the fake Kiban (with its "
        f"duplicate knob in the proof phase), {report.cross_copies} cross-receiver copies ("
        f"{report.cross_copies_accepted} accepted first, "
        f"{report.cross_copies_duplicate} answered duplicate); "
        f"acknowledged callbacks {report.accepted_callbacks}, all processed: "
        f"{not any('acknowledged' in f for f in report.failures)}; by receiver: accepted "
        f"{report.accepted_by_receiver}, duplicate {report.duplicate_by_receiver}"
    )
    if report.killed_worker:
        print(
            f"killed {report.killed_worker} while it ran {report.killed_job}: "
            f"that job is {report.killed_job_status}"
        )
    if report.cpu_seconds:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(report.cpu_seconds.items(), key=lambda kv: -kv[1]))
        print(f"CPU seconds per process: {cpu}")
    print("\nchecks: " + ("all passed" if report.ok else f"{len(report.failures)} FAILED"))
    for failure in report.failures[:30]:
        print(f"  - {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps-per-worker", type=int, default=ScaleConfig.apps_per_worker)
    parser.add_argument("--proof-apps", type=int, default=ScaleConfig.proof_apps)
    parser.add_argument("--latency-ms", type=float, default=ScaleConfig.latency_ms)
    parser.add_argument("--proof-latency-ms", type=float, default=ScaleConfig.proof_latency_ms)
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the throughput phases")
    parser.add_argument("--no-kill", action="store_true")
    args = parser.parse_args(argv)
    config = ScaleConfig(
        worker_counts=tuple(int(n) for n in args.workers.split(",") if n),
        apps_per_worker=args.apps_per_worker,
        proof_apps=args.proof_apps,
        latency_ms=args.latency_ms,
        proof_latency_ms=args.proof_latency_ms,
        kill=not args.no_kill,
    )
    started = time.monotonic()
    try:
        report = run(config)
    except ScaleCheckFailed as exc:
        print(exc)
        report = exc.report
    print_report(report, config)
    print(f"total {time.monotonic() - started:.0f} s")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
