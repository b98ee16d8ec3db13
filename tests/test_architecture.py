"""docs/architecture.md is the map of the code: every module of receiver/ and workers/ has a line in it,
and every job function path it lists resolves."""

from __future__ import annotations

import importlib
import re

from tests import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text()


def _modules() -> set[str]:
    found = set()
    for top in ("receiver", "workers"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found.add(".".join(parts))
    return found


def _mapped() -> set[str]:
    section = DOC.split("## Module map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)`", section, flags=re.M))


def test_every_module_is_on_the_map() -> None:
    missing = sorted(_modules() - _mapped())
    assert not missing, f"add these modules to the map in docs/architecture.md: {missing}"


def test_the_map_names_no_module_that_is_gone() -> None:
    stale = sorted(_mapped() - _modules())
    assert not stale, f"docs/architecture.md maps modules that do not exist: {stale}"


def test_listed_job_paths_resolve() -> None:
    section = DOC.split("## Job functions", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`(workers\.[a-z_.]+)`", section)
    assert len(paths) >= 7
    for path in paths:
        module, name = path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name)), path


def test_every_job_path_the_code_enqueues_is_listed() -> None:
    from workers.core import contract
    from workers.fanout import webhooks
    from workers.jobs import callbacks

    used = {
        *contract.JOB_FUNCTIONS.values(),
        contract.START_FUNCTION,
        contract.VALIDATE_FUNCTION,
        contract.RESEND_FUNCTION,
        callbacks.FINISH_FUNCTION,
        webhooks.DELIVER_FUNC,
    }
    section = DOC.split("## Job functions", 1)[1].split("\n## ", 1)[0]
    assert used <= set(re.findall(r"`(workers\.[a-z_.]+)`", section))
