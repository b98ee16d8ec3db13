"""The Dockerfile passes hadolint and keeps the properties the deployment relies on.

No Docker engine in CI, so the image is not built here; these checks are static.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tests import ROOT
from workers.ops.cli import main

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hadolint_finds_nothing() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /app\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3008" in result.stdout  # unpinned apt package


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_multi_stage_with_a_slim_runtime_without_build_tools() -> None:
    stages = _stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    assert runtime[0].split()[1] == "${PYTHON_IMAGE}"
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text())
    runtime_text = "\n".join(runtime)
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in runtime_text, f"{tool!r} in the runtime stage"
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime_text


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    users = [line for line in _stages()[-1] if line.startswith("USER ")]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes runAsNonRoot can verify it


def test_healthcheck_probes_healthz_of_the_receiver() -> None:
    text = "\n".join(_stages()[-1])
    assert re.search(r"HEALTHCHECK .*CMD .*http://127\.0\.0\.1:8000/healthz", text)


def test_one_image_for_every_role_chosen_by_command() -> None:
    text = "\n".join(_stages()[-1])
    assert 'ENTRYPOINT ["workfloo-bridge"]' in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    args = __import__("json").loads(cmd.group(1))
    assert args[0] == "serve"
    # The default command line is one the CLI accepts.
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**", "start from nothing and re-include, so secrets and .venv never leak"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in _stages()[0]:
        if line.startswith("COPY ") and "--from" not in line:
            copied.update(part.rstrip("/").removeprefix("./") for part in line.split()[1:-1])
    assert copied <= included, f"COPY sources not in the build context: {copied - included}"
    for secret_or_junk in ("deploy", ".env", ".venv", "tests", ".git"):
        assert secret_or_junk not in included
