"""``workfloo-bridge subscribers list|disable|enable``: the HTTP subscribers (``BRIDGE_HTTP_SUBSCRIBERS``),
their health, and the switch ``410 Gone`` flips (``workers.fanout.webhooks``)."""

from __future__ import annotations

import click

from workers.fanout import webhooks
from workers.ops.cli.helpers import EXIT_PROBLEM, console, fail, print_json, redis_or_exit, settings_or_exit
from workers.ops.render import subscribers_table


@click.group()
def subscribers() -> None:
    """HTTP subscribers: health, disable, enable."""


@subscribers.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def subscribers_list(as_json: bool) -> None:
    """Each subscriber: key, destination, types, disabled (and why), deliveries, last attempt."""
    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        rows = webhooks.subscribers(connection, settings)
    if as_json:
        print_json(rows)
    elif not rows:
        click.echo("no HTTP subscribers configured (BRIDGE_HTTP_SUBSCRIBERS)")
    else:
        console(width=200).print(subscribers_table(rows))


def _known(key: str) -> None:
    if webhooks.find_subscriber(settings_or_exit(configure_logs=False), key) is None:
        fail(f"no HTTP subscriber with key {key} (see `subscribers list`)", EXIT_PROBLEM)


@subscribers.command("disable")
@click.argument("key")
def subscribers_disable(key: str) -> None:
    """Stop deliveries to KEY until `enable` (queued deliveries return `disabled`)."""
    settings = settings_or_exit()
    _known(key)
    with redis_or_exit(settings) as connection:
        changed = webhooks.disable(connection, key)
    click.echo(f"disabled {key}" if changed else f"{key} was already disabled")


@subscribers.command("enable")
@click.argument("key")
def subscribers_enable(key: str) -> None:
    """Deliver to KEY again (after a 410 Gone or `disable`); events published meanwhile are not resent."""
    settings = settings_or_exit()
    _known(key)
    with redis_or_exit(settings) as connection:
        changed = webhooks.enable(connection, key)
    click.echo(f"enabled {key}" if changed else f"{key} was not disabled")
