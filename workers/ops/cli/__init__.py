"""The ``workfloo-bridge`` command line: one module per command, gathered into the group ``main``.

Entry points are the console script ``workers.ops.cli:main`` and ``python -m workers.ops.cli``; no
other module imports this package. Exit codes are shared by every command (``helpers``).
"""

from __future__ import annotations

import click

from workers.ops.cli import (
    check,
    demo,
    dlq,
    events,
    events_dead,
    fake,
    forget,
    keygen,
    scheduler,
    serve,
    status,
    subscribers,
    timeline,
    worker,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workfloo-bridge")
def main() -> None:
    """Kiban workfloo → Kompliant webhook receiver and event bridge."""


main.add_command(serve.serve)
main.add_command(worker.worker)
main.add_command(scheduler.scheduler)
main.add_command(dlq.dlq)
events.events.add_command(events_dead.dead)
main.add_command(events.events)
main.add_command(demo.demo)
main.add_command(fake.fake)
main.add_command(status.status)
main.add_command(check.check)
main.add_command(timeline.timeline)
main.add_command(forget.forget)
main.add_command(keygen.keygen)
main.add_command(subscribers.subscribers)
