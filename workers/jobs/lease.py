"""Job leases: of all runs of one job, only the newest may cause effects (fencing tokens).

A worker that is paused rather than dead (SIGSTOP, a VM or cgroup freeze, a GC stall, Redis unreachable
past the grace) loses its job to the reaper, which requeues it for another worker. When the paused one
resumes, its run must not repeat what the new run does. So every run takes a lease when it begins: a
fresh fencing token (``INCR`` of ``keys.LEASE_SEQUENCE``, never handed out twice) written with the run's
owner into the job's lease hash (``keys.job_lease``). The reaper replaces the token when it requeues a job
(``revoke``), and a newer run replaces it when it begins. Before every vendor call with an effect, a run
calls ``check`` (one atomic Redis call): a token that is no longer its own raises ``LeaseLostError``, and
the run stops quietly: no effect, no retry, no dead letter, no result (``workers.jobs.retry.guarded`` and
the worker's success hook).

``record_once`` is compare-and-set for an id a run got from a vendor (the Kiban execution id of
``start_application``): the value is written only if the run still holds the lease and nothing was
recorded before; the caller gets the value that stands, and a run that lost stops.

The lease hash expires ``BRIDGE_JOB_LEASE_TTL_SECONDS`` after the last check. A check that finds it gone
takes it again: nobody replaced the token (a replacement writes the hash), so the run is still the newest.

Outside an RQ job (a job function called directly) there is nothing to fence: ``check`` passes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import redis
from rq import get_current_job

from workers.core import keys
from workers.core.errors import LeaseLostError
from workers.core.log import get_logger
from workers.core.settings import Settings

log = get_logger(__name__)

__all__ = ["begin", "check", "current", "record_once", "recorded", "revoke", "stood_down"]

TOKEN, OWNER = "token", "owner"
RECORD_PREFIX = "rec:"

_BEGIN = """
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'token', token, 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token
"""

# ARGV: token, owner, ttl ms [, field, value]. Returns 0 when the token is not current, else 1 (check)
# or the value that stands (record).
_CHECK = """
local held = redis.call('HGET', KEYS[1], 'token')
if held == false then
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'owner', ARGV[2])
elseif held ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == nil then
  return 1
end
redis.call('HSETNX', KEYS[1], ARGV[4], ARGV[5])
return redis.call('HGET', KEYS[1], ARGV[4])
"""


@dataclass
class _Run:
    job_id: str
    token: str
    owner: str
    ttl_ms: int
    lost: bool = False


_run: _Run | None = None
"""The lease of the job this process runs now (one job at a time per worker process)."""


def _current_job_id() -> str | None:
    job = get_current_job()
    return None if job is None else str(job.id)


def _mine() -> _Run | None:
    job_id = _current_job_id()
    if job_id is None or _run is None or _run.job_id != job_id:
        return None
    return _run


def begin(connection: redis.Redis, settings: Settings) -> None:
    """Take the lease of the running job for this run (a newer token than any earlier run's)."""
    global _run
    _run = None
    job = get_current_job()
    if job is None:
        return
    owner = f"{job.worker_name or 'worker'}:{os.getpid()}"
    ttl_ms = settings.bridge_job_lease_ttl_seconds * 1000
    token = connection.eval(_BEGIN, 2, keys.job_lease(job.id), keys.LEASE_SEQUENCE, owner, ttl_ms)
    _run = _Run(job_id=str(job.id), token=str(token), owner=owner, ttl_ms=ttl_ms)


def _lost(run: _Run, where: str) -> LeaseLostError:
    run.lost = True
    log.warning("job_lease_lost", job_id=run.job_id, before=where)
    return LeaseLostError(f"lease lost before {where}")


def check(connection: redis.Redis, where: str) -> None:
    """Raise ``LeaseLostError`` unless this run still holds its job's lease; ``where`` names the effect
    about to happen (logged). Call right before each vendor call with an effect."""
    run = _mine()
    if run is None:
        return
    if run.lost:
        raise LeaseLostError(f"lease lost before {where}")
    held = connection.eval(_CHECK, 1, keys.job_lease(run.job_id), run.token, run.owner, run.ttl_ms)
    if not held:
        raise _lost(run, where)


def record_once(connection: redis.Redis, name: str, value: str) -> str:
    """Compare-and-set: record ``value`` under ``name`` for this job unless a value is recorded already;
    return the value that stands. Raises ``LeaseLostError`` (recording nothing) when this run lost its
    lease. Outside an RQ job, returns ``value``."""
    run = _mine()
    if run is None:
        return value
    if run.lost:
        raise LeaseLostError(f"lease lost before recording {name}")
    standing = connection.eval(
        _CHECK, 1, keys.job_lease(run.job_id), run.token, run.owner, run.ttl_ms, RECORD_PREFIX + name, value
    )
    if not standing:
        raise _lost(run, f"recording {name}")
    return standing.decode() if isinstance(standing, bytes) else str(standing)


def recorded(connection: redis.Redis, name: str) -> str | None:
    """The value an earlier run of the running job recorded under ``name``, if any."""
    job_id = _current_job_id()
    if job_id is None:
        return None
    raw: Any = connection.hget(keys.job_lease(job_id), RECORD_PREFIX + name)
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def current(connection: redis.Redis) -> bool:
    """True while this run holds its job's lease (or runs outside a job, or Redis cannot say)."""
    run = _mine()
    if run is None:
        return True
    if run.lost:
        return False
    try:
        check(connection, "finishing")
    except LeaseLostError:
        return False
    except redis.RedisError:
        return True
    return True


def stood_down(job_id: str) -> bool:
    """True when this process's run of ``job_id`` found its lease lost and stopped: the worker then
    records nothing for it (the newer run owns the job's status and result)."""
    return _run is not None and _run.job_id == job_id and _run.lost


def revoke(connection: redis.Redis, job_id: str, settings: Settings, owner: str = "reaper") -> None:
    """Make every run of ``job_id`` so far lose its lease (the reaper, before requeuing the job)."""
    ttl_ms = settings.bridge_job_lease_ttl_seconds * 1000
    connection.eval(_BEGIN, 2, keys.job_lease(job_id), keys.LEASE_SEQUENCE, owner, ttl_ms)
