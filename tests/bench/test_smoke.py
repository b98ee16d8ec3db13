"""Every quick benchmark still runs to its figures (tiny sizes: this checks that they work, not speed).

``bench.intake`` and ``bench.scale`` have their own tests (``tests/deploy/test_scale_out.py`` runs the
scale proof; the intake's servers are the ones the receiver tests start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("bench.footprint", ["--seconds", "1"], "worker RSS idle"),
        ("bench.workers", ["--jobs", "5", "--rounds", "1"], "in-process / fork ratio"),
        ("bench.fanout", ["--seconds", "1"], "ratio measured/baseline"),
    ],
)
def test_the_benchmark_prints_its_figures(module: str, args: list[str], expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_DATA_KEYS"}  # each bench makes its own
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout, result.stdout[-2000:]
