"""``workfloo-bridge status``: queues, workers, the event stream and consumer-group lag at a glance."""

from __future__ import annotations

import click

from workers.ops.cli.helpers import console, print_json, redis_or_exit, settings_or_exit
from workers.ops.render import print_status
from workers.ops.status import collect_status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--recent", default=10, show_default=True, type=click.IntRange(0, 1000), help="Recent events.")
def status(as_json: bool, recent: int) -> None:
    """Queue depths, started/failed jobs, workers, recent events and consumer-group lag.

    Exit 0 when Redis answered, 1 when it could not be reached, 2 on a configuration error.
    """
    settings = settings_or_exit()
    timeout = max(settings.redis_timeout_seconds, 2.0)
    with redis_or_exit(settings, socket_timeout=timeout, socket_connect_timeout=timeout) as client:
        report = collect_status(client, settings, recent=recent)
    if as_json:
        print_json(report)
    else:
        print_status(console(), report)
