"""`workfloo-bridge fake kiban|kompliant`: each fake on its own, as an integrator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from workers.sandbox.redis_server import free_port
from workers.sandbox.wait import wait_http

CLI = str(Path(sys.executable).parent / "workfloo-bridge")


@pytest.mark.parametrize(
    ("vendor", "defaults"),
    [
        ("kiban", ["(default: 8101)", "(default: kiban-test-key)", "(default: 0.5)"]),
        ("kompliant", ["(default: 8102)", "(default: sb_fakeaccount)"]),
    ],
)
def test_help_shows_every_default(vendor: str, defaults: list[str]) -> None:
    result = subprocess.run([CLI, "fake", vendor, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"usage: workfloo-bridge fake {vendor}" in result.stdout
    text = " ".join(result.stdout.split())
    for default in defaults:
        assert default in text


def test_fake_kiban_serves_the_api_with_its_key() -> None:
    port = free_port()
    child = subprocess.Popen([CLI, "fake", "kiban", "--port", str(port), "--api-key", "k1"])
    try:
        wait_http(f"http://127.0.0.1:{port}/_fake/executions", timeout=15)
        status = f"http://127.0.0.1:{port}/api/v1/workfloo/status/657118e1d511b6e54fe2a969"
        assert httpx.get(status, headers={"x-api-key": "kiban-test-key"}, timeout=5).status_code == 401
        assert httpx.get(status, headers={"x-api-key": "k1"}, timeout=5).status_code == 404
    finally:
        child.terminate()
        child.wait(timeout=10)
