"""Every Redis key and channel name the bridge uses, in one place.

All keys share the ``workfloo:`` prefix so an operator can find (and a test can flush) them.
RQ's own keys keep RQ's ``rq:`` prefix.
"""

from __future__ import annotations

PREFIX = "workfloo"

NIP_REF_TTL_SECONDS = 15 * 60
"""How long a submitted NIP waits for its validate job (``nip_ref``)."""


def dedupe(event_id: str) -> str:
    """A delivery id, or a command id named by an idempotency key, already accepted (string with TTL):
    written by the receiver's intake and by the Python API (``workers.jobs.api``)."""
    return f"{PREFIX}:dedupe:{event_id}"


def execution(execution_id: str) -> str:
    """Workers: hash with one application's state (status, link id, NIP resends, Kompliant ids, outcome)."""
    return f"{PREFIX}:exec:{execution_id}"


def link(link_id: str) -> str:
    """NIP link id → execution id, for NIP callbacks that arrive without an execution id."""
    return f"{PREFIX}:link:{link_id}"


def timeline(execution_id: str) -> str:
    """List of one application's event envelopes (JSON) in publish order."""
    return f"{PREFIX}:timeline:{execution_id}"


def event_once(once_key: str) -> str:
    """Publisher: an effect event already appended (makes retried jobs publish once)."""
    return f"{PREFIX}:once:{once_key}"


def channel(event_type: str) -> str:
    """Pub/sub channel for live listeners of one event type."""
    return f"{PREFIX}:events:{event_type}"


def nip_ref(ref: str) -> str:
    """A NIP waiting for its validate job (short TTL), so the NIP never sits in an RQ job payload."""
    return f"{PREFIX}:nipref:{ref}"


def handoff_lock(execution_id: str) -> str:
    """Lock serialising concurrent Kompliant hand-offs of one execution."""
    return f"{PREFIX}:lock:handoff:{execution_id}"


def job_lease(job_id: str) -> str:
    """Workers: hash with the fencing token and owner of the run holding a job's lease, and the values
    that run recorded with compare-and-set (``workers.jobs.lease``); TTL ``BRIDGE_JOB_LEASE_TTL_SECONDS``."""
    return f"{PREFIX}:lease:{job_id}"


LEASE_SEQUENCE = f"{PREFIX}:lease-seq"
"""Integer: the last fencing token handed out (``INCR``), for every job. One key, never expires: a token
must never be handed out twice."""


def stranded(queue_name: str, job_id: str) -> str:
    """Reaper: when a job id was first seen in RQ's intermediate list with no started-registry entry
    (Redis time, string; TTL ``BRIDGE_JOB_LEASE_TTL_SECONDS``)."""
    return f"{PREFIX}:stranded:{queue_name}:{job_id}"


def reconcile_lock() -> str:
    """Lock held by the running reconciler sweep (TTL ``BRIDGE_JOB_TIMEOUT_SECONDS``): one sweep at a time."""
    return f"{PREFIX}:lock:reconcile"


RECONCILE_LAST_SWEEP = f"{PREFIX}:reconcile:last-sweep"
"""String: Unix time the last reconciler sweep ended (one key, rewritten by every sweep; the
``bridge_reconciler_last_sweep_age_seconds`` gauge reads it)."""


def subscriber_disabled(subscriber_key: str) -> str:
    """HTTP subscriber: string (JSON reason) present while it is disabled (set on ``410 Gone``)."""
    return f"{PREFIX}:subscriber:{subscriber_key}:disabled"


def subscriber_state(subscriber_key: str) -> str:
    """HTTP subscriber: hash of delivery counters and the last attempt's outcome, for operators."""
    return f"{PREFIX}:subscriber:{subscriber_key}"


DURABILITY_PROBE = f"{PREFIX}:durability:probe"
"""A tiny write the durability wait is measured against (``workers.jobs.durability``): ``WAIT`` and
``WAITAOF`` count the writes of their own connection, so the probe goes on the waiting connection."""

DURABILITY_PROBE_TTL_SECONDS = 60
"""TTL of ``DURABILITY_PROBE``: it only needs to outlive one wait."""

OPEN_EXECUTIONS = f"{PREFIX}:open"
"""Sorted set: execution id → time it was last touched, for executions with no terminal event yet."""

FOLLOWUP_PENDING = f"{PREFIX}:followup"
"""Sorted set: approved execution id → when the reconciler next looks at its Kompliant hand-off, from the
moment the finish path decides to hand it off until the hand-off started, was rejected or conflicted.
Bounded by the approved executions whose hand-off is not done (docs/operations.md, keys without a TTL)."""

DEAD_LETTER_STREAM = f"{PREFIX}:events:dead"
"""Stream of entries a consumer group gave up on after too many deliveries."""


def stream_groups(stream: str) -> str:
    """Hash: consumer group → its dead-letter stream, written by each consumer when it joins ``stream``
    (one field per group: bounded)."""
    return f"{stream}:groups"


def stream_trimmed_unacked(stream: str) -> str:
    """Hash: consumer group → entries of ``stream`` it never acknowledged that were trimmed or deleted
    (a counter for metrics and ``status``; one field per group: bounded)."""
    return f"{stream}:trimmed_unacked"


TIMELINE_SWEEP_CURSOR = f"{PREFIX}:timeline-sweep:cursor"
"""String: where the retention job's ``SCAN`` over timelines resumes (expires after a day unused)."""
