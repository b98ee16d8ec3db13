"""RQ job functions (referenced by dotted path): callbacks, commands, reconciliation, Kompliant hand-off.

Every job takes one JSON-able dict, is idempotent (effects are keyed by execution id and ``once_key``),
and runs under ``workers.jobs.retry.guarded``.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from rq import get_current_job

from workers.core.settings import Settings, get_settings


@lru_cache(maxsize=4)
def _redis_for(url: str) -> redis.Redis:
    from workers.core.redis_client import redis_from_url

    return redis_from_url(url, settings=get_settings())


def connection() -> redis.Redis:
    """The worker's Redis connection inside a job, else one built from ``REDIS_URL``."""
    job = get_current_job()
    if job is not None:
        conn: redis.Redis = job.connection
        return conn
    settings = get_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set")
    return _redis_for(settings.redis_url)


def settings() -> Settings:
    return get_settings()
