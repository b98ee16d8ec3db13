"""Erasure of one application (the applicant's right to cancellation): everything the bridge holds about
one execution, deleted from Redis, then ``application.forgotten`` published.

What belongs to an execution is found from the execution itself, never from guesses about a person:

* keys named after it: the execution hash, its timeline, the hand-off lock, and every key whose name holds
  the id (once-keys ``nip:<id>:…``, ``finished:<id>``, the dedupe key ``finished-<id>``…), found with one
  ``SCAN MATCH *<id>*``;
* its RQ jobs: every job hash whose payload names the execution (``execution_id`` of a callback or command
  payload, an event envelope of a webhook delivery, the ``execution_id`` checkpoint of a start command), or
  whose id is one the execution's records name (its start command, the delivery ids of its callbacks).
  Each is deleted with RQ's own ``Job.delete`` (hash, results, executions, registries, queue), and its id is
  dropped from every registry and queue list of the bridge queues;
* the dedupe and once-keys of those deliveries and jobs, the NIP references of its validate commands, the
  link ids mapped to it (``workfloo:link:*`` whose value is the execution);
* its entries in the event stream and the consumers' dead-letter stream (``XDEL`` of every entry whose
  ``execution_id`` field is the execution: the streams are scanned).

Work in flight (a queued, started, scheduled or deferred job for the execution, or the execution still in
the open set) refuses the erasure with ``ErasureRefusedError`` unless ``force``: a job that runs after the
erasure would write the application back. ``force`` deletes queued and scheduled jobs too; a job already
running at that moment can still write once more, so a forced erasure is repeated once that job ended.

``application.forgotten`` carries no execution id (it would put the id back into the stream and a
timeline): ``data.execution_sha256`` is the SHA-256 of the id, so a subscriber that knows the id can match
it. Forgetting twice is harmless: the second run finds nothing and reports zero.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import orjson
import redis
from rq import get_current_job
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from workers.core import keys
from workers.core.contract import DEAD_LETTERS, EXECUTION_ID_RE, JOB_SERIALIZER, ForgetCommand
from workers.core.errors import ErasureRefusedError, PermanentError
from workers.core.events import Event, EventType
from workers.core.log import get_logger
from workers.core.settings import Settings
from workers.fanout.publisher import Publisher
from workers.jobs import connection as job_connection
from workers.jobs import settings as job_settings
from workers.jobs import state
from workers.jobs.retry import guarded

log = get_logger(__name__)

IN_FLIGHT_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
_SCAN_COUNT = 1000
_STREAM_PAGE = 1000
_REGISTRIES = (
    StartedJobRegistry,
    FinishedJobRegistry,
    FailedJobRegistry,
    DeferredJobRegistry,
    ScheduledJobRegistry,
    CanceledJobRegistry,
)


@dataclass
class ForgetReport:
    """What one erasure found and deleted (counts only: no id of the application, no personal data)."""

    execution_sha256: str
    forced: bool = False
    jobs: int = 0
    keys: int = 0
    stream_entries: int = 0
    dead_letter_entries: int = 0
    in_flight_jobs: int = 0
    was_open: bool = False
    published: bool = False
    details: dict[str, int] = field(default_factory=dict)

    @property
    def deleted(self) -> int:
        return self.jobs + self.keys + self.stream_entries + self.dead_letter_entries

    @property
    def nothing_left(self) -> bool:
        """True when this run found nothing to delete (an erasure already done, or an unknown id)."""
        return self.deleted == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "deleted": self.deleted, "nothing_left": self.nothing_left}


def execution_sha256(execution_id: str) -> str:
    return hashlib.sha256(execution_id.encode()).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _members(conn: redis.Redis, key: str, *, zset: bool = False) -> list[bytes]:
    raw = conn.zrange(key, 0, -1) if zset else conn.lrange(key, 0, -1)
    return cast(list[bytes], raw)


# --- what the execution's own records name -------------------------------------------------------


@dataclass
class _Found:
    job_ids: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    link_ids: set[str] = field(default_factory=set)
    nip_refs: set[str] = field(default_factory=set)
    stream_entries: list[bytes] = field(default_factory=list)
    dead_entries: list[bytes] = field(default_factory=list)
    replays: int = 3
    """Highest dead-letter or replay count among the jobs (``action-failed:<job>:<n>`` once-keys)."""


def _note_envelope(found: _Found, raw: bytes | str) -> None:
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if not isinstance(envelope, dict):
        return
    if envelope.get("id"):
        found.event_ids.add(str(envelope["id"]))
    data = envelope.get("data")
    if not isinstance(data, dict):
        return
    for name, bucket in (
        ("event_id", found.job_ids),
        ("job_id", found.job_ids),
        ("command_id", found.job_ids),
        ("link_id", found.link_ids),
    ):
        if data.get(name):
            bucket.add(str(data[name]))
    if envelope.get("type") == EventType.NIP_VALIDATED and data.get("command_id"):
        found.nip_refs.add(str(data["command_id"]))


def _stream_entries(
    conn: redis.Redis, stream: str, execution_id: str
) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of ``stream`` whose ``execution_id`` field is ``execution_id``, oldest first."""
    target = execution_id.encode()
    start: bytes | str = "-"
    while True:
        page: list[tuple[bytes, dict[bytes, bytes]]] = conn.xrange(
            stream, min=start, max="+", count=_STREAM_PAGE
        )  # type: ignore[assignment]
        if not page:
            return
        for entry_id, fields in page:
            if fields.get(b"execution_id") == target:
                yield entry_id, fields
        if len(page) < _STREAM_PAGE:
            return
        start = b"(" + page[-1][0]


def _gather_records(conn: redis.Redis, s: Settings, execution_id: str, found: _Found) -> dict[str, str]:
    known = state.load(conn, execution_id)
    if known.get(state.COMMAND_ID):
        found.job_ids.add(known[state.COMMAND_ID])
    if known.get(state.LINK_ID):
        found.link_ids.add(known[state.LINK_ID])
    found.job_ids.update({f"finished-{execution_id}", f"finish-{execution_id}"})
    for raw in _members(conn, keys.timeline(execution_id)):
        _note_envelope(found, raw)
    for entry_id, fields in _stream_entries(conn, s.events_stream, execution_id):
        found.stream_entries.append(entry_id)
        if b"event" in fields:
            _note_envelope(found, fields[b"event"])
    for entry_id, _fields in _stream_entries(conn, keys.DEAD_LETTER_STREAM, execution_id):
        found.dead_entries.append(entry_id)
    return known


# --- RQ jobs -----------------------------------------------------------------------------------


def _job_names(job: Job, execution_id: str) -> bool:
    """True when the job's payload or checkpoints name the execution."""
    if str(job.meta.get("execution_id") or "") == execution_id:
        return True
    try:
        args = job.args
    except Exception:  # an undecodable job is judged by its id only
        return False
    for arg in args or ():
        if isinstance(arg, dict) and str(arg.get("execution_id") or "") == execution_id:
            return True
        body = arg.get("body") if isinstance(arg, dict) else None
        if isinstance(body, dict) and str(body.get("id") or "") == execution_id:
            return True
        if isinstance(arg, str) and execution_id in arg:
            try:
                envelope = orjson.loads(arg)
            except orjson.JSONDecodeError:
                continue
            if isinstance(envelope, dict) and envelope.get("execution_id") == execution_id:
                return True
    return False


def _owned_by_id(job_id: str, execution_id: str, found: _Found) -> bool:
    """Ids the bridge forms from the execution id (``finished-<id>``, ``finish-<id>``,
    ``nip-resend-<id>-<n>``) and ids its records name. Exact matches only: one id may be a prefix of
    another's."""
    if job_id in found.job_ids or job_id in (f"finished-{execution_id}", f"finish-{execution_id}"):
        return True
    prefix = f"nip-resend-{execution_id}-"
    if job_id.startswith(prefix) and job_id[len(prefix) :].isdigit():
        return True
    if job_id.startswith("wh_"):  # wh_<subscriber>_<event id>_<attempt>
        parts = job_id.rsplit("_", 2)
        return len(parts) == 3 and parts[1] in found.event_ids
    return False


def _scan(conn: redis.Redis, match: str) -> Iterator[str]:
    for key in conn.scan_iter(match=match, count=_SCAN_COUNT):
        yield _text(key)


def _batches(items: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _mentions(raw: list[bytes | None], needle: bytes) -> bool:
    """Cheap pre-filter on a job hash's ``data`` (zlib) and ``meta``: both serializers RQ ships store
    strings as their UTF-8 bytes, so a job whose payload names the execution holds ``needle``."""
    data, meta = raw
    if meta and needle in meta:
        return True
    if not data:
        return False
    try:
        return needle in zlib.decompress(data)
    except zlib.error:
        return True  # unreadable here: let RQ judge it


def _find_jobs(conn: redis.Redis, execution_id: str, found: _Found, skip: str | None) -> list[Job]:
    prefix = Job.redis_job_namespace_prefix
    needle = execution_id.encode()
    ids = (
        key[len(prefix) :]
        for key in _scan(conn, prefix + "*")
        if ":" not in key[len(prefix) :]  # not rq:job:<id>:dependents and the like
    )
    owned: list[Job] = []
    for batch in _batches(ids):
        with conn.pipeline(transaction=False) as pipe:
            for job_id in batch:
                pipe.hmget(prefix + job_id, ["data", "meta"])
            raws = cast(list[list[bytes | None]], pipe.execute())
        candidates = [
            job_id
            for job_id, raw in zip(batch, raws, strict=True)
            if job_id != skip and (_owned_by_id(job_id, execution_id, found) or _mentions(raw, needle))
        ]
        for job in Job.fetch_many(candidates, connection=conn, serializer=JOB_SERIALIZER):
            if job is not None and (
                _owned_by_id(job.id, execution_id, found) or _job_names(job, execution_id)
            ):
                owned.append(job)
    return owned


def _note_job(found: _Found, job: Job) -> None:
    found.job_ids.add(job.id)
    found.replays = max(
        found.replays, int(job.meta.get("dlq_replays", 0)), int(job.meta.get(DEAD_LETTERS, 0))
    )
    try:
        args = job.args
    except Exception:
        return
    for arg in args or ():
        if isinstance(arg, dict):
            for name in ("event_id", "command_id"):
                if arg.get(name):
                    found.job_ids.add(str(arg[name]))
            if arg.get("nip_ref"):
                found.nip_refs.add(str(arg["nip_ref"]))
            if arg.get("link_id"):
                found.link_ids.add(str(arg["link_id"]))


def _status(job: Job) -> JobStatus | None:
    try:
        return job.get_status(refresh=False)
    except Exception:  # a hash without a status: not in flight
        return None


# --- the erasure -------------------------------------------------------------------------------


def forget_application(
    connection: redis.Redis, settings: Settings, execution_id: str, force: bool = False
) -> ForgetReport:
    """Delete everything held about ``execution_id`` and publish ``application.forgotten``.

    Raises ``ErasureRefusedError`` (nothing deleted) when work is in flight and ``force`` is false."""
    if not EXECUTION_ID_RE.fullmatch(execution_id):
        raise PermanentError("not an execution id: 1-64 characters of A-Z a-z 0-9 _ -")
    current = get_current_job()
    skip = current.id if current is not None else None
    conn, s = connection, settings
    report = ForgetReport(execution_sha256=execution_sha256(execution_id), forced=force)
    found = _Found()
    _gather_records(conn, s, execution_id, found)
    jobs = _find_jobs(conn, execution_id, found, skip)
    for job in jobs:
        _note_job(found, job)
    report.in_flight_jobs = sum(1 for job in jobs if _status(job) in IN_FLIGHT_STATUSES)
    report.was_open = conn.zscore(keys.OPEN_EXECUTIONS, execution_id) is not None
    if (report.in_flight_jobs or report.was_open) and not force:
        raise ErasureRefusedError(
            f"the application has work in flight ({report.in_flight_jobs} jobs queued, started or "
            f"scheduled; open execution: {'yes' if report.was_open else 'no'}); retry once it ended, "
            "or force"
        )

    report.jobs = _delete_jobs(conn, s, execution_id, jobs, found, skip)
    report.keys = _delete_keys(conn, execution_id, found, skip)
    if found.stream_entries:
        report.stream_entries = int(conn.xdel(s.events_stream, *found.stream_entries))
    if found.dead_entries:
        report.dead_letter_entries = int(conn.xdel(keys.DEAD_LETTER_STREAM, *found.dead_entries))
    report.details = {
        "jobs": report.jobs,
        "keys": report.keys,
        "stream_entries": report.stream_entries,
        "dead_letter_entries": report.dead_letter_entries,
    }
    report.published = Publisher(conn, s).publish(
        Event(
            type=EventType.APPLICATION_FORGOTTEN,
            data={
                "execution_sha256": report.execution_sha256,
                "command_id": skip,
                "forced": force,
                "deleted": report.details,
            },
        )
    )
    log.info(
        "application_forgotten", execution_sha256=report.execution_sha256, forced=force, **report.details
    )
    return report


def _delete_jobs(
    conn: redis.Redis, s: Settings, execution_id: str, jobs: list[Job], found: _Found, skip: str | None
) -> int:
    with conn.pipeline(transaction=False) as pipe:
        for job in jobs:
            job.delete(pipeline=pipe, remove_from_queue=True)
        pipe.execute()
    # Ids left in a registry or queue list after their job hash expired (or a hash RQ could not read).
    fetched = {job.id for job in jobs}
    orphans: set[str] = set()
    with conn.pipeline(transaction=False) as pipe:
        for queue_name in {s.bridge_queue, s.bridge_http_subscribers_queue}:
            queue = Queue(queue_name, connection=conn, serializer=JOB_SERIALIZER)
            members = [(queue.key, _text(m), False) for m in _members(conn, queue.key)]
            for registry_class in _REGISTRIES:
                key = registry_class(queue_name, connection=conn).key
                members += [(key, _text(m), True) for m in _members(conn, key, zset=True)]
            for key, job_id, is_zset in members:
                if job_id == skip or not (job_id in fetched or _owned_by_id(job_id, execution_id, found)):
                    continue
                if is_zset:
                    pipe.zrem(key, job_id)
                else:
                    pipe.lrem(key, 0, job_id)
                if job_id not in fetched:
                    orphans.add(job_id)
        pipe.execute()
    return len(jobs) + len(orphans)


def _delete_keys(conn: redis.Redis, execution_id: str, found: _Found, skip: str | None) -> int:
    names: set[str] = {
        keys.execution(execution_id),
        keys.timeline(execution_id),
        keys.handoff_lock(execution_id),
    }
    # Keys whose name holds the id as one ``:``-separated part (once-keys ``nip:<id>:…``) or holds one
    # of its job ids (``workfloo:dedupe:finished-<id>``, ``rq:results:nip-resend-<id>-1``).
    for key in _scan(conn, f"*{execution_id}*"):
        parts = key.split(":")
        if execution_id in parts or any(_owned_by_id(part, execution_id, found) for part in parts):
            names.add(key)
    for job_id in found.job_ids - {skip or ""}:
        names.update({keys.dedupe(job_id), keys.event_once(job_id), keys.event_once(f"status:{job_id}")})
        names.add(keys.job_lease(job_id))  # holds the execution id a start job recorded
        names.update(keys.event_once(f"action-failed:{job_id}:{n}") for n in range(found.replays + 1))
        names.update(keys.event_once(f"job-dead-lettered:{job_id}:{n}") for n in range(1, found.replays + 2))
    names.update(keys.nip_ref(ref) for ref in found.nip_refs)
    names.update(keys.link(link_id) for link_id in found.link_ids)
    target = execution_id.encode()
    for batch in _batches(_scan(conn, keys.link("*"))):
        values = cast(list[bytes | None], conn.mget(batch))
        names.update(key for key, value in zip(batch, values, strict=True) if value == target)
    if skip:  # the forget job's own record: RQ removes it when the job ends (its dedupe key goes now)
        names.discard(str(Job.key_for(skip)))
        names.add(keys.dedupe(skip))
    deleted = 0
    ordered = sorted(names)
    for batch in _batches(ordered):
        deleted += int(conn.delete(*batch))
    deleted += int(conn.zrem(keys.OPEN_EXECUTIONS, execution_id))
    deleted += int(conn.zrem(keys.FOLLOWUP_PENDING, execution_id))  # nothing left to hand off
    return deleted


# --- the job the receiver's endpoint enqueues ---------------------------------------------------


def forget_job(command: ForgetCommand) -> Any:
    """``workers.jobs.erasure.forget_job``: the erasure as an RQ job (``DELETE /v1/applications/{id}``).

    A refusal (work in flight) is the answer, not a dead letter: ``action.failed`` says so and the job
    ends. After an erasure the job's own record goes at once (``result_ttl`` 0): it names the execution."""
    conn, s = job_connection(), job_settings()
    execution_id = command["execution_id"]
    return guarded(conn, s, "forget", execution_id, lambda: _forget(conn, s, command))


def _forget(conn: redis.Redis, s: Settings, command: ForgetCommand) -> dict[str, Any]:
    from workers.jobs.retry import publish_action_failed, reason_of

    try:
        report = forget_application(conn, s, command["execution_id"], force=bool(command["force"]))
    except ErasureRefusedError as exc:
        publish_action_failed(
            conn, s, action="forget", execution_id=command["execution_id"], reason=reason_of(exc),
            retryable=False, attempts=1,
        )  # fmt: skip
        return {"forgotten": False, "reason": "in_flight"}
    job = get_current_job()
    if job is not None:
        job.result_ttl = 0
    return {"forgotten": True, **report.as_dict()}
