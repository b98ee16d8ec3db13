"""``workfloo-bridge check``: is this deployment's configuration usable, in plain words."""

from __future__ import annotations

import click

from workers.ops.checks import run_checks
from workers.ops.cli.helpers import EXIT_PROBLEM, console, print_json, settings_or_exit
from workers.ops.render import print_checks


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check(as_json: bool) -> None:
    """Validate the settings and reach Redis, Kiban and Kompliant with harmless calls.

    Prints what is wrong in plain words. Exit 0 when everything works, 1 when a check failed, 2 when the
    settings cannot be read at all.
    """
    settings = settings_or_exit()
    results = run_checks(settings)
    ok = all(r.ok for r in results)
    if as_json:
        print_json({"ok": ok, "checks": [r.as_dict() for r in results]})
    else:
        print_checks(console(), results)
    if not ok:
        raise SystemExit(EXIT_PROBLEM)
