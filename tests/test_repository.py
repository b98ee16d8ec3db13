"""The files an adopter looks for first: the licence, the changelog, the security policy, how to
contribute, and a pre-commit configuration that runs the same checks as `make test`."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests import ROOT


def test_apache_2_licence_in_the_tree_and_the_metadata() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    for folder in (ROOT, ROOT / "consumer"):
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        assert project["license"] == "Apache-2.0"
        assert (folder / "LICENSE").read_text() == licence


def test_changelog_keeps_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in text
    assert re.search(r"^## \[Unreleased\]$", text, re.MULTILINE)


def test_security_policy_says_how_to_report_and_what_data_is_held() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    assert "## Reporting a vulnerability" in text
    assert "docs/data-protection.md" in text and (ROOT / "docs/data-protection.md").exists()


def test_pre_commit_runs_the_same_tools_as_make_test() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    makefile = (ROOT / "Makefile").read_text()
    for entry in entries:
        assert entry.startswith(".venv/bin/"), entry  # the locked tools, not a second copy
        assert entry.replace(".venv/bin/", "$(BIN)/") in makefile, entry
    assert {entry.split()[0].rsplit("/", 1)[1] for entry in entries} == {"ruff", "mypy", "lint-imports"}
    assert (ROOT / "CONTRIBUTING.md").exists()


def _tracked_text_files() -> list[str]:
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.yaml", "*.toml", "Dockerfile", "Makefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in listed if (ROOT / name).exists()]


def test_docs_and_code_lean_on_no_file_outside_the_repository() -> None:
    this = "tests/test_repository.py"
    for name in _tracked_text_files():
        if name == this:
            continue
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "API-NOTES" not in text, f"{name}: cite docs/vendor-assumptions.md"
        assert "/work/shared" not in text, name


def test_every_cited_assumption_is_stated_with_where_the_bridge_relies_on_it() -> None:
    page = (ROOT / "docs/vendor-assumptions.md").read_text()
    gaps = page[page.index("## Gaps and working assumptions") :]
    where = page[page.index("## Where the bridge relies") : page.index("## Sources")]
    labels = {f"K{i}" for i in range(1, 8)} | {f"P{i}" for i in range(1, 9)}
    for label in labels:
        assert re.search(rf"^\| {label} \|", gaps, re.MULTILINE), f"{label} not in the gaps table"
        assert re.search(rf"^\| {label} \|", where, re.MULTILINE), f"{label} not in the where table"
    cited: set[str] = set()
    for name in _tracked_text_files():
        if name.startswith(("receiver/", "workers/", "docs/", "README")) and not name.endswith(
            "configuration.md"
        ):
            cited |= set(re.findall(r"\b([KP][0-9])\b", (ROOT / name).read_text(encoding="utf-8")))
    assert cited and cited <= labels, f"cited but not stated: {cited - labels}"
