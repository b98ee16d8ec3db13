"""RQ job functions (referenced by dotted path): callbacks, commands, reconciliation, Kompliant hand-off.

Every job takes one JSON-able dict, is idempotent (effects are keyed by execution id and ``once_key``),
and runs under ``workers.jobs.retry.guarded``.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from rq import get_current_job

from workers.core.crypto import KeyRing
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


@lru_cache(maxsize=2)
def _ring_for(entries: tuple[str, ...]) -> KeyRing:
    return KeyRing.from_entries(entries)


def data_keys(s: Settings | None = None) -> KeyRing:
    """The key ring of ``BRIDGE_DATA_KEYS`` (built once per process); ``DataKeyError`` when unset."""
    s = s or get_settings()
    return _ring_for(tuple(item.get_secret_value() for item in s.bridge_data_keys))
