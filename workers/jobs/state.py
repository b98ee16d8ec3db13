"""Application state kept by the workers in Redis.

* ``keys.execution(id)``: one hash per Kiban execution (field names below). It is the anchor for
  exactly-once effects: the Kompliant subject record id is written (``HSETNX``) before any workflow is
  created under it, then the workflow id, then ``kompliant_started``.
* ``keys.OPEN_EXECUTIONS``: zset of executions with no terminal event yet, scored by the time the
  reconciler should next consider them (last activity; the reconciler pushes the score forward by its
  poll backoff). A terminal execution is never re-added (a late NIP event must not reopen it).
* ``keys.FOLLOWUP_PENDING``: zset of approved executions whose Kompliant hand-off is not done yet, scored
  by when the reconciler next looks at them; ``FOLLOWUP_JOB`` in the hash names the job carrying the
  hand-off, so the reconciler can tell a live hand-off from a dead one.
* ``keys.link(link_id)``: NIP link id → execution id.

Retention (``BRIDGE_EXECUTION_RETENTION_SECONDS``): every write to the hash of an execution that is not
terminal yet (here and in ``Publisher.publish``'s state fields) sets the hash's TTL to it, so an open
execution lives while anything happens to it (callbacks, reconciler polls); the write that makes it
terminal is the last refresh, so a finished execution is kept exactly that long after it finished and
late callbacks or the Kompliant hand-off never extend it. A link mapping gets the same TTL when written.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import redis

from workers.core import crypto, keys
from workers.core.crypto import KeyRing
from workers.core.settings import get_settings

# --- execution hash fields ---------------------------------------------------------------------
STATUS = "status"
NODE_TYPE = "node_type"
NIP_PHASE = "nip_phase"
LINK_ID = "link_id"
TERMINAL = "terminal"
DECISION = "decision"
FINISHED_AT = "finished_at"
CREATED_AT = "created_at"
COMMAND_ID = "command_id"
NIP_RESENDS = "nip_resends"
NIP_FINAL_FAILED = "nip_final_failed"
KOMPLIANT_SUBJECT_RECORD = "kompliant_subject_record_id"
KOMPLIANT_WORKFLOW = "kompliant_workflow_id"
KOMPLIANT_STARTED = "kompliant_started"
KOMPLIANT_REJECTED = "kompliant_rejected"
KOMPLIANT_CONFLICT = "kompliant_conflict"
RECONCILE_POLLS = "reconcile_polls"
NOT_FOUND_POLLS = "not_found_polls"
FOLLOWUP_JOB = "followup_job"


def retention_seconds() -> int:
    """``BRIDGE_EXECUTION_RETENTION_SECONDS`` of this process: the TTL the writes here set."""
    return get_settings().bridge_execution_retention_seconds


# One write to an execution hash, then the retention refresh: only while the hash was not terminal
# before this write (or has no TTL at all). KEYS: the hash. ARGV: ttl, command, its arguments.
_WRITE = """
local finished = redis.call('HGET', KEYS[1], 'terminal') == '1' and redis.call('TTL', KEYS[1]) > 0
local result = redis.call(ARGV[2], KEYS[1], unpack(ARGV, 3))
if not finished then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return result
"""


def _write(connection: redis.Redis | redis.client.Pipeline, execution_id: str, *command: str) -> Any:
    return connection.eval(_WRITE, 1, keys.execution(execution_id), retention_seconds(), *command)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def load(connection: redis.Redis, execution_id: str) -> dict[str, str]:
    raw: Mapping[bytes | str, bytes | str] = connection.hgetall(keys.execution(execution_id))
    return {str(_text(k)): str(_text(v)) for k, v in raw.items()}


def get_field(connection: redis.Redis, execution_id: str, field: str) -> str | None:
    return _text(connection.hget(keys.execution(execution_id), field))


def set_fields(connection: redis.Redis, execution_id: str, fields: Mapping[str, str]) -> None:
    if fields:
        _write(connection, execution_id, "HSET", *(part for pair in fields.items() for part in pair))


def set_once(connection: redis.Redis, execution_id: str, field: str, value: str) -> str:
    """``HSETNX`` then read back: the value that won (ours or a concurrent writer's)."""
    with connection.pipeline() as pipe:
        _write(pipe, execution_id, "HSETNX", field, value)
        pipe.hget(keys.execution(execution_id), field)
        _, winner = pipe.execute()
    return str(_text(winner))


def is_terminal(connection: redis.Redis, execution_id: str) -> bool:
    return get_field(connection, execution_id, TERMINAL) == "1"


_TOUCH_OPEN = """
if redis.call('HGET', KEYS[1], 'terminal') == '1' then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
else
  redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[2])
end
return 1
"""


def touch_open(
    connection: redis.Redis, execution_id: str, at: float | None = None, *, refresh: bool = True
) -> bool:
    """Mark the execution as open (awaiting a terminal event) unless it is already terminal; activity on
    an open execution refreshes its hash's TTL.

    ``refresh=False`` only adds it when absent (keeps the reconciler's backoff score)."""
    score = time.time() if at is None else at
    result = connection.eval(
        _TOUCH_OPEN, 2, keys.execution(execution_id), keys.OPEN_EXECUTIONS, repr(score), execution_id,
        "1" if refresh else "0", retention_seconds(),
    )  # fmt: skip
    return bool(result)


def close(connection: redis.Redis, execution_id: str) -> None:
    """The execution reached a terminal state: the reconciler stops looking at it."""
    connection.zrem(keys.OPEN_EXECUTIONS, execution_id)


def due_for_reconcile(connection: redis.Redis, older_than: float, limit: int) -> list[str]:
    raw = connection.zrangebyscore(keys.OPEN_EXECUTIONS, "-inf", repr(older_than), start=0, num=limit)
    return [item.decode() if isinstance(item, bytes) else str(item) for item in raw]


def count_not_found(connection: redis.Redis, execution_id: str) -> int:
    """One more Kiban 404 for the execution; how many in a row so far (``clear_not_found`` resets)."""
    return int(_write(connection, execution_id, "HINCRBY", NOT_FOUND_POLLS, "1"))


def clear_not_found(connection: redis.Redis, execution_id: str) -> None:
    connection.hdel(keys.execution(execution_id), NOT_FOUND_POLLS)


# --- follow-up pending: approved executions whose hand-off is not done ---------------------------


def followup_register(
    connection: redis.Redis, execution_id: str, job_id: str | None, *, at: float | None = None
) -> None:
    """The execution must be handed off: on the follow-up set (kept score if already there) and the job
    carrying the hand-off recorded, before anything that could close the execution."""
    score = time.time() if at is None else at
    with connection.pipeline() as pipe:
        pipe.zadd(keys.FOLLOWUP_PENDING, {execution_id: score}, nx=True)
        if job_id:
            _write(pipe, execution_id, "HSET", FOLLOWUP_JOB, job_id)
        pipe.execute()


def followup_done(connection: redis.Redis, execution_id: str) -> None:
    """The hand-off ended (started, rejected or conflict): the reconciler stops looking."""
    connection.zrem(keys.FOLLOWUP_PENDING, execution_id)


def followup_defer(connection: redis.Redis, execution_id: str, at: float) -> None:
    """Next look at ``at`` (only while the entry exists: a hand-off that just ended stays off the set)."""
    connection.zadd(keys.FOLLOWUP_PENDING, {execution_id: at}, xx=True)


def followup_due(connection: redis.Redis, now: float, limit: int) -> list[str]:
    raw = connection.zrangebyscore(keys.FOLLOWUP_PENDING, "-inf", repr(now), start=0, num=limit)
    return [item.decode() if isinstance(item, bytes) else str(item) for item in raw]


def is_followup_pending(connection: redis.Redis, execution_id: str) -> bool:
    return connection.zscore(keys.FOLLOWUP_PENDING, execution_id) is not None


def map_link(connection: redis.Redis, link_id: str, execution_id: str) -> None:
    with connection.pipeline() as pipe:
        pipe.set(keys.link(link_id), execution_id, ex=retention_seconds())
        _write(pipe, execution_id, "HSETNX", LINK_ID, link_id)
        pipe.execute()


def resolve_link(connection: redis.Redis, link_id: str) -> str | None:
    return _text(connection.get(keys.link(link_id)))


_CLAIM_RESEND = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return tonumber(existing) end
local finished = redis.call('HGET', KEYS[1], 'terminal') == '1' and redis.call('TTL', KEYS[1]) > 0
local n = redis.call('HINCRBY', KEYS[1], 'nip_resends', 1)
redis.call('HSET', KEYS[1], ARGV[1], n)
if not finished then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""


def claim_nip_resend(connection: redis.Redis, execution_id: str, error_key: str) -> int:
    """The resend number (1, 2, …) owed to one NIP ERROR event; the same event always gets the same number,
    so a retried job never burns a second resend for one error."""
    field = f"nip_error:{error_key}"
    return int(connection.eval(_CLAIM_RESEND, 1, keys.execution(execution_id), field, retention_seconds()))


def count_reconcile_poll(connection: redis.Redis, execution_id: str) -> int:
    """One more reconciler poll of the execution; the number of polls so far (this one included)."""
    return int(_write(connection, execution_id, "HINCRBY", RECONCILE_POLLS, "1"))


# --- a small lock: SET NX PX with a random token, released by Lua only by its owner -------------
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lock:
    def __init__(self, connection: redis.Redis, key: str, ttl_seconds: float) -> None:
        self.connection = connection
        self.key = key
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.token = secrets.token_hex(16)

    def acquire(self, wait_seconds: float = 0.0, poll_seconds: float = 0.05) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            if self.connection.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_seconds)

    def release(self) -> bool:
        return bool(self.connection.eval(_RELEASE, 1, self.key, self.token))


def stash_nip(connection: redis.Redis, ref: str, nip: str, ring: KeyRing) -> None:
    """The NIP waits sealed (purpose ``nip``, id = ``ref``) under a short-TTL key for its validate job."""
    connection.set(keys.nip_ref(ref), ring.seal_text(nip, crypto.NIP, ref), ex=keys.NIP_REF_TTL_SECONDS)


def take_nip(connection: redis.Redis, ref: str, ring: KeyRing) -> str | None:
    """The stashed NIP opened, or None when it expired. A plaintext stash (earlier releases) is read as
    is; a sealed one that fails to open raises ``DataKeyError``."""
    stored = _text(connection.get(keys.nip_ref(ref)))
    if stored is None or not crypto.is_envelope(stored):
        return stored
    return ring.open_text(stored, crypto.NIP, ref)


def drop_nip(connection: redis.Redis, ref: str) -> None:
    connection.delete(keys.nip_ref(ref))
