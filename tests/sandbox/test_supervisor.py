"""Process supervision: children in their own groups, stopped with everything they started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workers.sandbox.supervisor import Child, Supervisor, pid_alive
from workers.sandbox.wait import WaitTimeout, holds_within, wait_http, wait_port, wait_until

# A child that starts a grandchild (like an RQ worker forking a work horse) and prints both pids.
PARENT_WITH_GRANDCHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(grandchild.pid, flush=True)
    time.sleep(60)
    """
)

IGNORES_SIGTERM = textwrap.dedent(
    """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    holds_within(lambda: not any(pid_alive(pid) for pid in pids), timeout, interval=0.05)
    return [pid for pid in pids if pid_alive(pid)]


def _read_line(path: Path, timeout: float = 10.0) -> str:
    def line() -> str:
        text = path.read_text() if path.exists() else ""
        return text.strip().splitlines()[0] if text.endswith("\n") else ""

    return wait_until(line, timeout=timeout, what=f"a line in {path}")


def test_stop_all_ends_children_and_grandchildren(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path, grace_seconds=5)
    child = supervisor.start("parent", [sys.executable, "-c", PARENT_WITH_GRANDCHILD])
    grandchild = int(_read_line(tmp_path / "parent.log"))
    assert pid_alive(child.pid) and pid_alive(grandchild)
    assert os.getpgid(child.pid) == child.pid, "child must lead its own process group"
    assert os.getpgid(child.pid) != os.getpgid(0)

    supervisor.stop_all()

    assert _wait_gone([child.pid, grandchild]) == []
    assert child.process.returncode == -signal.SIGTERM


def test_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path, grace_seconds=0.5)
    child = supervisor.start("stubborn", [sys.executable, "-c", IGNORES_SIGTERM])
    assert _read_line(tmp_path / "stubborn.log") == "ready"
    supervisor.stop_all()
    assert child.process.returncode == -signal.SIGKILL
    assert not pid_alive(child.pid)


def test_output_goes_to_the_log_file_not_the_terminal(tmp_path: Path) -> None:
    with Supervisor(log_dir=tmp_path) as supervisor:
        child = supervisor.start("talker", [sys.executable, "-c", "print('hello from child')"])
        child.process.wait(timeout=10)
    assert "hello from child" in (tmp_path / "talker.log").read_text()
    assert child.log_tail() == (tmp_path / "talker.log").read_text()


def test_wait_until_fails_fast_with_the_log_tail_when_the_child_exits(tmp_path: Path) -> None:
    with Supervisor(log_dir=tmp_path) as supervisor:
        child = supervisor.start(
            "crasher", [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
        )
        started = time.monotonic()
        with pytest.raises(WaitTimeout, match="crasher exited with code 3") as info:
            wait_until(lambda: False, timeout=30, what="never", child=child)
        assert "boom: bad config" in str(info.value)
        assert time.monotonic() - started < 25  # it did not sit out the whole timeout


def test_wait_until_times_out_with_the_name_of_what_it_waited_for() -> None:
    with pytest.raises(WaitTimeout, match="timed out after 0s waiting for the moon"):
        wait_until(lambda: False, timeout=0.2, what="the moon")


def test_wait_port_and_wait_http(tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request):  # type: ignore[no-untyped-def]
        return PlainTextResponse("ok")

    server = serve(Starlette(routes=[Route("/ok", ok)]))
    wait_port(server.port, timeout=5)
    wait_http(f"{server.url}/ok", timeout=5)
    with pytest.raises(WaitTimeout):
        wait_http(f"{server.url}/missing", timeout=0.3)


DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from workers.sandbox.supervisor import Supervisor, Terminated, signals_as_exceptions
    log_dir = Path(sys.argv[1])
    supervisor = Supervisor(log_dir=log_dir, grace_seconds=5)
    with signals_as_exceptions():
        try:
            for i in range(3):
                supervisor.start(f"c{i}", [sys.executable, "-c", "import time; time.sleep(60)"])
            print(" ".join(str(p) for p in supervisor.pids()), flush=True)
            time.sleep(60)
        except (KeyboardInterrupt, Terminated) as exc:
            print("stopping:", type(exc).__name__, flush=True)
        finally:
            supervisor.stop_all()
    sys.exit(7)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_every_child(tmp_path: Path, sig: signal.Signals) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert driver.stdout is not None
    pids = [int(p) for p in driver.stdout.readline().split()]
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    driver.send_signal(sig)
    out, _ = driver.communicate(timeout=20)
    expected = "KeyboardInterrupt" if sig == signal.SIGINT else "Terminated"
    assert f"stopping: {expected}" in out
    assert driver.returncode == 7  # the finally block and the code after it ran
    assert _wait_gone(pids) == []


def test_children_get_sigterm_when_the_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the supervisor cannot run cleanup; PR_SET_PDEATHSIG still ends the children."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert driver.stdout is not None
    pids = [int(p) for p in driver.stdout.readline().split()]
    driver.kill()
    driver.wait(timeout=10)
    assert _wait_gone(pids) == []


def test_a_child_started_from_a_short_lived_thread_outlives_that_thread(tmp_path: Path) -> None:
    """The parent-death signal follows the forking thread: a worker started by a test's kill loop was
    SIGTERMed when the loop ended, and the stack was left with no worker (the 20-kill run stalled)."""
    import threading

    with Supervisor(log_dir=tmp_path) as supervisor:
        started: list[Child] = []
        thread = threading.Thread(target=lambda: started.append(supervisor.start("sleeper", ["sleep", "30"])))
        thread.start()
        thread.join()
        time.sleep(0.5)
        assert started[0].alive(), "the child died with the thread that started it"
