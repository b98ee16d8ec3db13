"""``workfloo-bridge events dead list|replay``: the consumers' dead-letter stream
(``workers.fanout.dead_events``), a subgroup of ``events``."""

from __future__ import annotations

import click

from workers.fanout import dead_events
from workers.ops.cli.helpers import EXIT_PROBLEM, console, fail, print_json, redis_or_exit, settings_or_exit
from workers.ops.render import dead_events_table


@click.group()
def dead() -> None:
    """The consumer groups' dead-letter stream."""


@dead.command("list")
@click.option("--count", "-n", default=100, show_default=True, help="Most recent entries shown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def dead_list(count: int, as_json: bool) -> None:
    """Entries: id, group, reason, deliveries, event type, execution id, original id (never the event)."""
    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        entries = dead_events.list_dead_events(connection, count=count)
    if as_json:
        print_json([entry.as_dict() for entry in entries])
    elif not entries:
        click.echo("no dead-lettered events")
    else:
        console(width=200).print(dead_events_table(entries))


@dead.command("replay")
@click.argument("entry_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry that holds an event.")
def dead_replay(entry_id: str | None, replay_all: bool) -> None:
    """Append the entry's event to the stream again (same event id) and drop it from the dead letters."""
    if bool(entry_id) == replay_all:
        raise click.UsageError("give an ENTRY_ID or --all")
    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        if replay_all:
            done = dead_events.replay_all(connection, settings)
            click.echo(f"replayed {len(done)}")
            for item in done:
                click.echo(item)
            return
        assert entry_id is not None
        try:
            new_id = dead_events.replay(connection, settings, entry_id)
        except LookupError as exc:
            fail(str(exc), EXIT_PROBLEM)
    click.echo(f"replayed {entry_id} as {new_id}")
