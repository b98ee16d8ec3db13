"""Crash recovery end to end: a job whose worker process group is SIGKILLed mid-job runs again, same id,
well within 30 s, on another worker; scheduled jobs outlive the scheduler's holder; an early SIGTERM is a
clean stop. The reaper's decisions are in test_reaper.py."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import DefaultSerializer

from workers.core.contract import CRASH_REQUEUES, JOB_SERIALIZER
from workers.core.settings import load_settings
from workers.runtime import dead_letters
from workers.runtime.worker import BridgeSimpleWorker
from workers.sandbox.wait import wait_until

BIN = Path(sys.executable).parent / "workfloo-bridge"
QUEUE = "workfloo"


def worker_env(redis_url: str, worker_class: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "BRIDGE_WORKER_CLASS": worker_class,
        "BRIDGE_WORKER_HEARTBEAT_SECONDS": "1",
        "BRIDGE_WORKER_HEARTBEAT_GRACE_SECONDS": "2",
        "BRIDGE_REAPER_INTERVAL_SECONDS": "0.5",
        "BRIDGE_WORKER_TTL_SECONDS": "16",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_worker(
    env: dict[str, str], procs: list[subprocess.Popen[bytes]], *, scheduler: bool = False
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN), "worker", "--scheduler" if scheduler else "--no-scheduler"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc


@pytest.mark.parametrize(
    "worker_class", ["workers.runtime.worker.BridgeSimpleWorker", "workers.runtime.worker.BridgeWorker"]
)
def test_sigkilled_worker_job_finishes_on_another_worker(
    redis_url: str, redis_client: redis.Redis, spawn: list[subprocess.Popen[bytes]], worker_class: str
) -> None:
    env = worker_env(redis_url, worker_class)
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("time.sleep", 4, job_id="crash-me", job_timeout=60)
    first = start_worker(env, spawn)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, timeout=15, what="the job to start")
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group: worker and any work-horse
    first.wait(timeout=10)
    killed_at = time.monotonic()
    start_worker(env, spawn)
    wait_until(
        lambda: job.get_status(refresh=True) == JobStatus.FINISHED,
        timeout=30,
        what="the job to finish elsewhere",
    )
    assert time.monotonic() - killed_at < 30
    assert Job.fetch("crash-me", connection=redis_client, serializer=JOB_SERIALIZER).meta[CRASH_REQUEUES] == 1


def test_scheduled_jobs_survive_the_death_of_the_scheduler_holder(
    redis_url: str, redis_client: redis.Redis, spawn: list[subprocess.Popen[bytes]]
) -> None:
    env = {
        **worker_env(redis_url, "workers.runtime.worker.BridgeSimpleWorker"),
        "BRIDGE_SCHEDULER_STALE_SECONDS": "3",
    }
    holder = start_worker(env, spawn, scheduler=True)
    lock = RQScheduler.get_locking_key(QUEUE)
    wait_until(
        lambda: redis_client.get(lock) is not None,
        timeout=15,
        what="the first worker to take the scheduler lock",
    )
    start_worker(env, spawn, scheduler=True)
    time.sleep(1)
    os.killpg(holder.pid, signal.SIGKILL)  # worker and its scheduler process
    holder.wait(timeout=10)
    killed_at = time.monotonic()
    job = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).enqueue_in(
        timedelta(seconds=1), "time.sleep", 0
    )
    # RQ alone: the dead holder's lock lives 61 s and is retried at the next maintenance.
    wait_until(
        lambda: job.get_status(refresh=True) == JobStatus.FINISHED,
        timeout=30,
        what="the scheduled job to run",
    )
    assert time.monotonic() - killed_at < 30


def test_sigterm_right_after_registration_is_a_clean_stop(
    redis_client: redis.Redis, redis_url: str, spawn: list[subprocess.Popen[bytes]]
) -> None:
    """RQ registers the worker and starts its scheduler before it installs its signal handlers; a
    SIGTERM in that window (an orchestrator stopping a pod that just started) used to kill the process
    (exit -15). It must be a warm shutdown: exit 0, worker deregistered."""
    from rq import Worker

    env = worker_env(redis_url, "workers.runtime.worker.BridgeSimpleWorker")
    for _ in range(3):
        proc = start_worker(env, spawn, scheduler=True)
        deadline = time.monotonic() + 30
        while not Worker.all(connection=redis_client) and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert Worker.all(connection=redis_client) == []


def test_a_child_forked_before_rqs_handlers_still_dies_on_sigterm(redis_client: redis.Redis) -> None:
    """RQ forks its scheduler after ``bootstrap`` and before it installs its own signal handlers, so the
    scheduler inherits the early-signal handler. On a stop in that window the worker SIGTERMs the
    scheduler and joins it: the child must die as it would without the bridge, or the join hangs."""
    worker = BridgeSimpleWorker([QUEUE], connection=redis_client)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.bootstrap()
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # stands in for the scheduler before RQScheduler.work() installs its handlers
            os.write(ready_write, b"up")
            time.sleep(10)
            os._exit(0)
        os.close(ready_write)
        assert os.read(ready_read, 2) == b"up"  # past the interpreter's own after-fork set-up
        os.close(ready_read)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert worker._early_stop is False  # the child's signal is not the worker's stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        worker.teardown()


class _MakesADirectory:
    """Unpickling this runs ``os.mkdir(path)``: what a job written by anyone with Redis access could do
    to a pickle worker."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize(
    "worker_class", ["workers.runtime.worker.BridgeSimpleWorker", "workers.runtime.worker.BridgeWorker"]
)
def test_a_pickled_job_fails_as_a_bad_job_and_never_runs(
    redis_url: str,
    redis_client: redis.Redis,
    spawn: list[subprocess.Popen[bytes]],
    worker_class: str,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pickle-ran"
    # Written the way RQ's default serializer writes a job: the whole job tuple is a pickle.
    crafted = Queue(QUEUE, connection=redis_client, serializer=DefaultSerializer).enqueue(
        "builtins.print", _MakesADirectory(str(marker)), job_id="crafted"
    )
    assert b"posix" in zlib.decompress(redis_client.hget(crafted.key, "data") or b"")  # a real pickle
    after = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).enqueue(
        "builtins.len", [1, 2], job_id="after"
    )
    start_worker(worker_env(redis_url, worker_class), spawn)
    wait_until(
        lambda: after.get_status(refresh=True) == JobStatus.FINISHED, timeout=30, what="the next job to run"
    )
    assert after.return_value() == 2
    assert not marker.exists()
    failed = FailedJobRegistry(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    assert failed.get_job_ids() == ["crafted"]
    job = Job.fetch("crafted", connection=redis_client, serializer=JOB_SERIALIZER)
    assert job.get_status() == JobStatus.FAILED
    assert "DeserializationError" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert 0 < redis_client.ttl("rq:results:crafted") <= load_settings().job_failure_ttl_seconds
    (letter,) = dead_letters.list_dead_letters(redis_client, QUEUE)  # listed, never unpickled
    assert (letter.job_id, letter.function, letter.reason) == (
        "crafted",
        None,
        "DeserializationError",
    )
    assert not marker.exists()


# --- a failed job's log lines: no arguments, no exception text ---------------------------------------

LEAK_FORM = {"first_name": "Begoña", "rfc_pf": "GODE-561231-GR8", "telefono": 5512349876, "nip": 48213579}
LEAK_VALUES = ("Begoña", "GODE-561231-GR8", "GODE561231GR8", "5512349876", "48213579")


def leaky_job(form: dict[str, object], *, applicant: dict[str, object]) -> None:
    """Fails the way a careless library does: the exception text and its cause repeat the input."""
    try:
        raise ValueError(f"cannot use {form!r} for {applicant}")
    except ValueError as exc:
        raise KeyError(f"applicant {applicant['first_name']} {form}") from exc


@pytest.mark.parametrize("worker_class", ["BridgeSimpleWorker", "BridgeWorker"])
def test_a_failing_job_logs_neither_its_arguments_nor_exception_text(
    redis_url: str, redis_client: redis.Redis, worker_class: str
) -> None:
    """A real worker process at DEBUG: RQ's own ``handle_exception`` would log ``job.args``/``kwargs``
    and the traceback's texts at ERROR, and the job's description (its call) at INFO."""
    job = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).enqueue(
        f"{__name__}.leaky_job", LEAK_FORM, applicant=LEAK_FORM, job_id=f"leaky-{worker_class}"
    )
    env = {
        **worker_env(redis_url, f"workers.runtime.worker.{worker_class}"),
        "BRIDGE_LOG_LEVEL": "DEBUG",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [str(BIN), "worker", "--burst", "--no-scheduler"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-2000:]
    assert job.get_status(refresh=True) == JobStatus.FAILED
    leaks = [line for line in output.splitlines() if any(v.lower() in line.lower() for v in LEAK_VALUES)]
    assert not leaks, "\n".join(leaks[:10])
    [failure] = [json.loads(line) for line in output.splitlines() if '"job_exception"' in line]
    assert failure["job_id"] == job.id and failure["func"].endswith("leaky_job")
    assert failure["error"] == "KeyError <- ValueError"
    assert "in leaky_job" in failure["exception"]  # the frames are kept


def test_the_exception_handlers_still_run(redis_client: redis.Redis) -> None:
    seen: list[str] = []
    worker = BridgeSimpleWorker([QUEUE], connection=redis_client)
    worker.push_exc_handler(lambda job, *exc_info: seen.append(job.id) or True)
    job = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).enqueue(
        f"{__name__}.leaky_job", LEAK_FORM, applicant=LEAK_FORM, job_id="leaky-handlers"
    )
    worker.work(burst=True)
    assert seen == [job.id]


# --- a failed job's stored failure record: no applicant data, and it expires -------------------------

# Awkward forms on purpose: accents, a dashed RFC, a CURP, an address, an integer phone, 4- and 8-digit
# NIPs, a URL-encoded e-mail.
RECORD_FORM: dict[str, object] = {
    "nombre": "Begoña",
    "apellido": "Ibáñez",
    "rfc_pf": "GODE-561231-GR8",
    "curp": "GODE561231HDFRRN09",
    "domicilio": "Calle Ámsterdam 250",
    "telefono": 5512349876,
    "nip": 7394,
    "nip_buro": 48213579,
    "email": "begona.ibanez%40example.com",
}
RECORD_CANARIES = (
    "Begoña", "Ibáñez", "GODE-561231-GR8", "GODE561231", "GODE561231HDFRRN09", "Ámsterdam", "5512349876",
    "7394", "48213579", "begona.ibanez",
)  # fmt: skip


def failing_applicant_job(form: dict[str, object]) -> None:
    """Fails the way a careless library does: every exception of the chain repeats the applicant."""
    try:
        try:
            raise ValueError(f"bad form {form!r}")
        except ValueError as exc:
            raise LookupError(f"no applicant {form['nombre']} {form['apellido']} {form['curp']}") from exc
    except LookupError:
        raise RuntimeError(  # noqa: B904 - the implicit chain ("During handling …") on purpose
            f"{form['rfc_pf']} at {form['domicilio']}: tel {form['telefono']} nip {form['nip']}/"
            f"{form['nip_buro']} mail={form['email']}"
        )


def _stored(client: redis.Redis, key: str) -> str:
    """A job hash's failure field, or every field of a result stream, with RQ's encodings undone."""
    raw: list[bytes] = []
    if client.type(key) == b"hash":  # the job's own fields (its arguments are the test's input)
        raw += [client.hget(key, "exc_info") or b""]
    else:
        for _id, fields in client.xrange(key):
            for field, value in fields.items():
                raw += [field, value]
    texts = []
    for value in raw:
        texts.append(value)
        with contextlib.suppress(zlib.error):
            texts.append(zlib.decompress(value))
        with contextlib.suppress(binascii.Error, ValueError, zlib.error):
            texts.append(zlib.decompress(base64.b64decode(value, validate=True)))
    return b"\n".join(texts).decode(errors="replace")


@pytest.mark.parametrize("worker_class", ["BridgeSimpleWorker", "BridgeWorker"])
def test_a_failed_jobs_stored_record_holds_no_applicant_data_and_expires(
    redis_url: str, redis_client: redis.Redis, spawn: list[subprocess.Popen[bytes]], worker_class: str
) -> None:
    """RQ stores the failure (``exc_string`` in ``rq:results:<id>``, ``exc_info`` in the job hash) as the
    full traceback text; the bridge stores the code-only one. A job enqueued with RQ's default failure
    TTL (a year for the job, never for its result) gets the bridge's ``BRIDGE_JOB_FAILURE_TTL_SECONDS``."""
    job = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER).enqueue(
        f"{__name__}.failing_applicant_job", RECORD_FORM, job_id=f"record-{worker_class}"
    )
    env = {
        **worker_env(redis_url, f"workers.runtime.worker.{worker_class}"),
        "BRIDGE_JOB_FAILURE_TTL_SECONDS": "7200",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    start_worker(env, spawn)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, timeout=30, what="the job to fail")
    result = job.latest_result()
    assert result is not None and result.exc_string is not None
    assert "in failing_applicant_job" in result.exc_string  # the frames are kept
    assert result.exc_string.splitlines()[-1] == "RuntimeError"  # the reason, from codes
    stored = _stored(redis_client, job.key) + _stored(redis_client, f"rq:results:{job.id}")
    leaks = [canary for canary in RECORD_CANARIES if canary.lower() in stored.lower()]
    assert leaks == [], stored[-3000:]
    (letter,) = dead_letters.list_dead_letters(redis_client, QUEUE)
    assert letter.reason == "RuntimeError"
    for key in (job.key, f"rq:results:{job.id}"):
        assert 7000 < redis_client.ttl(key) <= 7200, (key, redis_client.ttl(key))


def test_rqs_own_failure_texts_are_stored_through_the_redactor(redis_client: redis.Redis) -> None:
    """RQ's other callers (a killed work-horse, a job stuck in the intermediate queue) pass their own
    words, with no exception for ``handle_exception`` to render: stored redacted, never as given."""
    worker = BridgeSimpleWorker([QUEUE], connection=redis_client)
    queue = Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)
    job = queue.enqueue("builtins.len", [1], job_id="own-words")
    worker.handle_job_failure(job, queue, exc_string="Work-horse terminated; rfc=GODE-561231-GR8 5512349876")
    result = Job.fetch("own-words", connection=redis_client, serializer=JOB_SERIALIZER).latest_result()
    assert result is not None and result.exc_string == "Work-horse terminated; rfc=[REDACTED] [REDACTED]"
    assert 0 < redis_client.ttl(f"rq:results:{job.id}") <= load_settings().job_failure_ttl_seconds
