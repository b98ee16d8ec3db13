"""Readiness checks called directly, without the CLI around them."""

from __future__ import annotations

import pytest

from workers.core.settings import load_settings
from workers.ops.checks import check_settings, safe_url


def test_check_flags_a_public_url_kiban_cannot_reach(clean_env: pytest.MonkeyPatch, redis_url: str) -> None:
    clean_env.setenv("REDIS_URL", redis_url)
    clean_env.setenv("KIBAN_BASE_URL", "https://sandbox.workfloo.kiban.com")
    clean_env.setenv("BRIDGE_PUBLIC_URL", "http://10.0.0.5:8000")
    results = {r.name: r for r in check_settings(load_settings())}
    assert not results["public-url"].ok
    assert "BRIDGE_PUBLIC_URL points at 10.0.0.5" in results["public-url"].message
    clean_env.setenv("BRIDGE_PUBLIC_URL", "https://bridge.example.com")
    assert "public-url" not in {r.name for r in check_settings(load_settings())}


def test_safe_url_hides_the_password() -> None:
    assert safe_url("redis://user:s3cret@db.internal:6380/2") == "redis://***@db.internal:6380/2"
    assert safe_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"
    assert safe_url(None) == "(unset)"
