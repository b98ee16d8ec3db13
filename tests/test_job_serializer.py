"""Every RQ object the code builds names its serializer: one call left on RQ's default would write (or
unpickle) jobs the bridge's JSON workers cannot read — or run whatever a writer to Redis put there."""

from __future__ import annotations

import ast
from pathlib import Path

from tests import ROOT

# RQ constructors that take ``serializer=`` and default to pickle without it.
CONSTRUCTORS = frozenset(
    {
        "Queue",
        "Job",
        "Worker",
        "SimpleWorker",
        "RQScheduler",
        "FailedJobRegistry",
        "StartedJobRegistry",
        "ScheduledJobRegistry",
        "DeferredJobRegistry",
        "FinishedJobRegistry",
        "CanceledJobRegistry",
    }
)
# Class methods of the same kind: ``Job.fetch(...)``, ``Queue.all(...)``.
METHODS = frozenset({("Job", "fetch"), ("Job", "fetch_many"), ("Job", "create"), ("Queue", "all")})
REGISTRIES = frozenset(name for name in CONSTRUCTORS if name.endswith("Registry"))


def _rq_names(tree: ast.Module) -> set[str]:
    """Names this module imports from rq (``Queue`` of ``asyncio``/``queue`` is someone else's)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rq":
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _missing(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rq_names = _rq_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in CONSTRUCTORS and func.id in rq_names:
            name = func.id
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (func.value.id, func.attr) in METHODS
            and func.value.id in rq_names
        ):
            name = f"{func.value.id}.{func.attr}"
        else:
            continue
        keywords = {k.arg for k in node.keywords}
        if None in keywords or "serializer" in keywords:  # **options may carry it
            continue
        if name in REGISTRIES and "queue" in keywords:  # takes the queue's serializer
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        found.append(f"{where}:{node.lineno} {name}(...)")
    return found


def test_every_rq_queue_job_registry_and_worker_names_its_serializer() -> None:
    missing = [
        site
        for top in ("receiver", "workers", "tests", "bench")
        for path in sorted((ROOT / top).rglob("*.py"))
        for site in _missing(path)
    ]
    assert not missing, "pass serializer=JOB_SERIALIZER (workers.core.contract) at: " + ", ".join(missing)


def test_the_check_sees_a_call_without_serializer(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from rq import Queue\nfrom rq.job import Job\nimport asyncio\n"
        "Queue('q', connection=None)\nJob.fetch('x', connection=None)\nasyncio.Queue()\n"
        "Queue('q', connection=None, serializer=1)\n"
    )
    assert [site.split(" ", 1)[1] for site in _missing(probe)] == ["Queue(...)", "Job.fetch(...)"]
