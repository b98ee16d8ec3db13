"""Start and stop child processes so that nothing is left running.

Each child runs in its own process group (``start_new_session``), with its output in a log file. A
terminal's Ctrl-C therefore reaches only the parent, which then stops the children itself, in reverse
start order: SIGTERM to the whole group, a grace period, then SIGKILL. On Linux each child also asks the
kernel for SIGTERM if the parent dies without cleaning up (``PR_SET_PDEATHSIG``).

``signals_as_exceptions()`` turns SIGTERM (and SIGHUP) into ``Terminated`` so ``finally`` blocks run for
them exactly as they do for Ctrl-C's ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived; raised in the main thread like ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` in the main thread."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM are ignored: a second Ctrl-C cannot cut cleanup short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once in the parent: between fork and exec the child only makes this one C call (no imports,
# no dlopen), which is what keeps a preexec_fn safe while the parent has other threads (rich's spinner).
_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """preexec_fn: SIGTERM this child when the parent thread that started it dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
    """One thread for the process's lifetime that starts children for other short-lived threads."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supervisor-spawn")
        return _SPAWNER


def child_popen_kwargs() -> dict[str, Any]:
    """``subprocess.Popen`` arguments for a supervised child: own process group, dies with the parent."""
    return {
        "start_new_session": True,
        "preexec_fn": _die_with_parent if _PRCTL is not None else None,
    }


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path | None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-chars:]
        return data.decode("utf-8", "replace")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(0) said it exists
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Supervisor:
    """Owns a set of child processes; ``stop_all()`` (or leaving the ``with`` block) ends every one."""

    def __init__(self, log_dir: Path | None = None, grace_seconds: float = 10.0) -> None:
        self.log_dir = log_dir
        self.grace_seconds = grace_seconds
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Child:
        """Start ``argv`` in a new process group; stdout and stderr go to ``<log_dir>/<name>.log``."""
        log_path: Path | None = None
        log: IO[bytes] | None = None
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            log = log_path.open("ab")
            out = log
        full_env = dict(os.environ if env is None else env)

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                **child_popen_kwargs(),
            )

        # The kernel's parent-death signal follows the *thread* that forked the child: a child started from
        # a short-lived thread (a test's kill loop) was SIGTERMed when that thread ended. Such starts go
        # through one long-lived spawner thread instead.
        if threading.current_thread() is threading.main_thread():
            process = spawn()
        else:
            process = _spawner().submit(spawn).result()
        child = Child(name=name, argv=list(argv), process=process, log_path=log_path, _log=log)
        self.children.append(child)
        return child

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def failed(self) -> list[Child]:
        """Children that exited on their own."""
        return [child for child in self.children if not child.alive()]

    def stop(self, child: Child, grace_seconds: float | None = None) -> int | None:
        """SIGTERM the child's process group, wait, then SIGKILL it. Returns the exit code."""
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        if child.alive():
            _signal_group(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(timeout=10)
        # Grandchildren (e.g. a forked RQ work horse) share the group: make sure none outlives the child.
        _signal_group(child.process, signal.SIGKILL)
        if child._log is not None:
            child._log.close()
            child._log = None
        return child.process.returncode

    def stop_all(self, grace_seconds: float | None = None) -> None:
        """Stop every child: all get SIGTERM at once (fast), then each is waited for, latest first."""
        for child in reversed(self.children):
            if child.alive():
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + (self.grace_seconds if grace_seconds is None else grace_seconds)
        for child in reversed(self.children):
            self.stop(child, grace_seconds=max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
