"""``workfloo-bridge forget ID [--force]``: erase everything the bridge holds about one application."""

from __future__ import annotations

import click

from workers.core.errors import ErasureRefusedError, PermanentError
from workers.jobs.erasure import forget_application
from workers.ops.cli.helpers import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    fail,
    print_json,
    redis_or_exit,
    settings_or_exit,
)


@click.command()
@click.argument("execution_id")
@click.option("--force", is_flag=True, help="Erase even while jobs for it are queued, running or scheduled.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def forget(execution_id: str, force: bool, as_json: bool) -> None:
    """Delete everything held about EXECUTION_ID (state, timeline, jobs, dead letters, stream entries,
    NIP references, link ids, once-keys) and publish ``application.forgotten``.

    Safe to repeat: a second run finds nothing and still exits 0. Exit 1 when the application still has
    work in flight (nothing is deleted then; ``--force`` erases anyway).
    """
    settings = settings_or_exit()
    with redis_or_exit(settings) as client:
        try:
            report = forget_application(client, settings, execution_id, force=force)
        except PermanentError as exc:
            fail(str(exc), EXIT_USAGE)
        except ErasureRefusedError as exc:
            fail(f"not erased: {exc}", EXIT_PROBLEM)
    if as_json:
        print_json(report.as_dict())
    elif report.nothing_left:
        click.echo("nothing left to erase")
    else:
        click.echo(
            f"erased: {report.jobs} jobs, {report.keys} keys, {report.stream_entries} stream entries, "
            f"{report.dead_letter_entries} dead-letter stream entries"
        )
