"""``workfloo-bridge timeline ID``: one application's events read from Redis, so no receiver is needed."""

from __future__ import annotations

import click

from workers.core.timeline import read_timeline
from workers.ops.cli.helpers import EXIT_PROBLEM, console, print_json, redis_or_exit, settings_or_exit
from workers.ops.render import timeline_table


@click.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON.")
def timeline(execution_id: str, as_json: bool) -> None:
    """Every event of one application, in order, with the time between steps.

    Exit 1 when the bridge has no event for EXECUTION_ID.
    """
    settings = settings_or_exit()
    timeout = max(settings.redis_timeout_seconds, 2.0)
    with redis_or_exit(settings, socket_timeout=timeout, socket_connect_timeout=timeout) as client:
        result = read_timeline(client, execution_id)
    if as_json:
        print_json(result)
    elif result["count"]:
        out = console()
        out.print(timeline_table(execution_id, result["events"]))
        out.print(f"{result['count']} events over {result['duration_ms'] / 1000:.2f} s")
    if not result["count"]:
        if not as_json:
            click.echo(f"no events for execution {execution_id}", err=True)
        raise SystemExit(EXIT_PROBLEM)
