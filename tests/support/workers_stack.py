"""End-to-end stack for the worker tests (fixtures in ``bridge_fixtures``): a private redis-server, the
real receiver, fake Kiban and fake Kompliant in threads over loopback HTTP, and real ``workfloo-bridge
worker`` processes the test starts."""

from __future__ import annotations

from collections.abc import Iterator

from tests.support.bridge import BIN, Bridge, running_bridge
from workers.sandbox.stack import StackConfig, StackKeys

CALLBACK_KEY = "cb-a5bf746222dd605a133150d55e11a38135b0606a"
INTERNAL_KEY = "in-b243554f1b135cdf0f46ae85dab432c3e983087f"
KIBAN_KEY = "kiban-test-key"
DEFINITION = "def-e2e"
# Fast retries, crash detection and reconciling so each test runs in seconds (production is slower).
E2E_ENV = {
    "BRIDGE_RETRY_BASE_SECONDS": "0.05",
    "BRIDGE_RETRY_CAP_SECONDS": "0.3",
    "BRIDGE_NIP_RESEND_DELAY_SECONDS": "0.2",
    "BRIDGE_WORKER_HEARTBEAT_SECONDS": "1",
    "BRIDGE_WORKER_HEARTBEAT_GRACE_SECONDS": "2",
    "BRIDGE_REAPER_INTERVAL_SECONDS": "0.5",
    "BRIDGE_WORKER_TTL_SECONDS": "16",
    "BRIDGE_HANDOFF_LOCK_TTL_SECONDS": "3",
    "BRIDGE_RECONCILE_AFTER_SECONDS": "1",
    "BRIDGE_RECONCILE_INTERVAL_SECONDS": "1",
    "BRIDGE_RECONCILE_POLL_BACKOFF_SECONDS": "0.5",
    "BRIDGE_RECONCILE_POLL_BACKOFF_CAP_SECONDS": "1",
    "BRIDGE_LOG_LEVEL": "WARNING",
}


def make_bridge(tmp_env: dict[str, str] | None = None, *, redis_url: str | None = None) -> Iterator[Bridge]:
    """The stack on its own redis-server, or on ``redis_url`` (a test's ``private_redis``)."""
    config = StackConfig(
        redis_url=redis_url,
        in_process=True,
        guarded=False,
        workers=0,
        scheduler=False,
        keys=StackKeys(callback=CALLBACK_KEY, internal=INTERNAL_KEY, kiban=KIBAN_KEY),
        definition_id=DEFINITION,
        tuning=E2E_ENV,
        extra_env=tmp_env or {},
    )
    with running_bridge(config, keep_logs=False) as bridge:
        yield bridge


__all__ = ["BIN", "CALLBACK_KEY", "DEFINITION", "INTERNAL_KEY", "KIBAN_KEY", "Bridge", "make_bridge"]
