"""``workfloo-bridge dlq list|replay``: dead letters, i.e. RQ's failed-job registry of the bridge queue."""

from __future__ import annotations

import click

from workers.ops.cli.helpers import EXIT_PROBLEM, console, fail, print_json, redis_or_exit, settings_or_exit
from workers.ops.render import dead_letters_table
from workers.runtime import dead_letters


@click.group()
def dlq() -> None:
    """Dead letters (RQ's failed-job registry of the bridge queue)."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def dlq_list(as_json: bool) -> None:
    """List dead letters: id, function, failed at, reason, execution id."""
    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        letters = dead_letters.list_dead_letters(connection, settings.bridge_queue)
    if as_json:
        print_json([letter.as_dict() for letter in letters])
    elif not letters:
        click.echo("no dead letters")
    else:
        console(width=200).print(dead_letters_table(letters))


@dlq.command("replay")
@click.argument("job_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dlq_replay(job_id: str | None, replay_all: bool) -> None:
    """Requeue one dead letter (same job id) or all of them."""
    if bool(job_id) == replay_all:
        raise click.UsageError("give a JOB_ID or --all")
    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        if replay_all:
            done = dead_letters.replay_all(connection, settings.bridge_queue)
            click.echo(f"replayed {len(done)}")
            for item in done:
                click.echo(item)
            return
        assert job_id is not None
        try:
            dead_letters.replay(connection, settings.bridge_queue, job_id)
        except LookupError as exc:
            fail(str(exc), EXIT_PROBLEM)
    click.echo(f"replayed {job_id}")
