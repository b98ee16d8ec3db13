"""The bridge for the resilience tests, on ``workers.sandbox.stack``: Redis with AOF (it is stopped and
restarted), workers as processes the test starts, kills and replaces, and every process's output in its
own log file under the test's ``logdir``.

``process_stack``: everything a process, as in production (the fakes via ``python -m
workers.sandbox.fakes.*``, the receiver via ``workfloo-bridge serve``). ``bridge_stack``: receiver
(guarded protocol) and both fakes in threads, so a test can read the fakes' state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.bridge import BIN, TERMINAL_TYPES, Bridge, running_bridge
from workers.sandbox.stack import StackConfig, StackKeys

CALLBACK_KEY = "cb-f83cfa4eff13db4ad533f7944a7e4225610ce42e"
INTERNAL_KEY = "in-222fa0440f02683e64852f61bacf005eec557952"
KIBAN_KEY = "kiban-key-resilience-0f4a8e6d"
DEFINITION = "def-resilience"
KEYS = StackKeys(callback=CALLBACK_KEY, internal=INTERNAL_KEY, kiban=KIBAN_KEY)

# Effect events the publisher makes unique per execution: a second one would be a duplicated effect.
ONCE_PER_EXECUTION = (
    "application.started",
    "nip.validated",
    *TERMINAL_TYPES,
    "kompliant.workflow.created",
    "kompliant.workflow.started",
    "kompliant.workflow.rejected",
    "kompliant.workflow.conflict",
)
# Fast timings so crashes are noticed and retries run within seconds (production defaults are longer).
FAST_ENV = {
    "BRIDGE_RETRY_BASE_SECONDS": "0.05",
    "BRIDGE_RETRY_CAP_SECONDS": "0.5",
    "BRIDGE_NIP_RESEND_DELAY_SECONDS": "0.2",
    "BRIDGE_WORKER_HEARTBEAT_SECONDS": "1",
    "BRIDGE_WORKER_HEARTBEAT_GRACE_SECONDS": "2",
    "BRIDGE_REAPER_INTERVAL_SECONDS": "0.5",
    "BRIDGE_WORKER_TTL_SECONDS": "16",
    "BRIDGE_HANDOFF_LOCK_TTL_SECONDS": "3",
    "BRIDGE_LOG_LEVEL": "INFO",
}


@contextmanager
def process_stack(logdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Bridge]:
    """Redis (AOF), both fakes and the receiver as processes; workers are started by the test."""
    config = StackConfig(
        workers=0,
        scheduler=False,
        appendonly=True,
        keys=KEYS,
        definition_id=DEFINITION,
        tuning={"BRIDGE_LOG_LEVEL": "DEBUG"},
        extra_env=extra_env or {},
        decision_delay=0.1,
        nip_event_delay=0.05,
        log_dir=logdir,
    )
    with running_bridge(config) as bridge:
        yield bridge


@contextmanager
def bridge_stack(
    logdir: Path, extra_env: dict[str, str] | None = None, *, callback_base: str | None = None
) -> Iterator[Bridge]:
    """Redis (AOF), receiver (guarded protocol) and both fakes in threads; workers are started by the test.
    ``callback_base``: where Kiban is told to send callbacks (default: the receiver)."""
    config = StackConfig(
        in_process=True,
        workers=0,
        scheduler=False,
        appendonly=True,
        keys=KEYS,
        definition_id=DEFINITION,
        tuning=FAST_ENV,
        extra_env=extra_env or {},
        callback_base=callback_base,
        log_dir=logdir,
    )
    with running_bridge(config) as bridge:
        yield bridge


__all__ = [
    "BIN",
    "CALLBACK_KEY",
    "DEFINITION",
    "FAST_ENV",
    "INTERNAL_KEY",
    "KIBAN_KEY",
    "ONCE_PER_EXECUTION",
    "Bridge",
    "bridge_stack",
    "process_stack",
]
