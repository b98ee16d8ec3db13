"""Readiness checks called directly, without the CLI around them."""

from __future__ import annotations

import pytest
import redis

from workers.core.settings import load_settings
from workers.ops.checks import check_durability, check_redis, check_settings, safe_url
from workers.sandbox.redis_server import RedisServer


def test_check_flags_a_public_url_kiban_cannot_reach(clean_env: pytest.MonkeyPatch, redis_url: str) -> None:
    clean_env.setenv("REDIS_URL", redis_url)
    clean_env.setenv("BRIDGE_KIBAN_BASE_URL", "https://sandbox.workfloo.kiban.com")
    clean_env.setenv("BRIDGE_PUBLIC_URL", "https://10.0.0.5:8000")
    results = {r.name: r for r in check_settings(load_settings())}
    assert not results["public-url"].ok
    assert "BRIDGE_PUBLIC_URL points at 10.0.0.5" in results["public-url"].message
    clean_env.setenv("BRIDGE_PUBLIC_URL", "https://bridge.example.com")
    assert "public-url" not in {r.name for r in check_settings(load_settings())}


def test_safe_url_hides_the_password() -> None:
    assert safe_url("redis://user:s3cret@db.internal:6380/2") == "redis://user:***@db.internal:6380/2"
    assert safe_url("rediss://db:6380/2?password=s3cret") == "rediss://db:6380/2?password=***"
    assert safe_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"
    assert safe_url(None) == "(unset)"


def test_check_redis_never_shows_the_password(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("requirepass", "right-Pa55word")
    client.close()
    host = private_redis.url.split("://", 1)[1].split("/", 1)[0]
    for url in (f"redis://:wrong-Pa55word@{host}/0", f"redis://{host}/0?password=wrong-Pa55word"):
        result = check_redis(load_settings(redis_url=url))
        assert not result.ok
        assert "refused the password" in result.message
        assert "Pa55" not in result.message
    assert check_redis(load_settings(redis_url=f"redis://:right-Pa55word@{host}/0")).ok


def test_check_durability_explains_the_level_and_flags_one_redis_cannot_meet(redis_url: str) -> None:
    auto = check_durability(load_settings(redis_url=redis_url))
    assert auto.ok and auto.message == "auto: no replica connected; AOF off"
    floor = check_durability(load_settings(redis_url=redis_url, bridge_durability="replica"))
    assert not floor.ok and "0 of 1 replica connected" in floor.message
    aof = check_durability(load_settings(redis_url=redis_url, bridge_durability="aof"))
    assert not aof.ok and "AOF is off" in aof.message
