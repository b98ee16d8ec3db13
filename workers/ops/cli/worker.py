"""``workfloo-bridge worker``: one RQ worker with the project's worker class, on the bridge queue or the
queues named by ``--queue`` (the webhook delivery queue, ``BRIDGE_HTTP_SUBSCRIBERS_QUEUE``, for example)."""

from __future__ import annotations

import click

from workers.ops.cli.helpers import redis_or_exit, settings_or_exit


@click.command()
@click.option("--burst", is_flag=True, help="Quit when the queue is empty (scheduled jobs due now run too).")
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also run RQ's scheduler (retries with backoff and NIP resends are scheduled jobs).",
)
@click.option("--worker-class", "worker_class", default=None, help="Override BRIDGE_WORKER_CLASS.")
@click.option("--name", default=None, help="Worker name (default: random).")
@click.option("--max-jobs", type=int, default=None, help="Quit after this many jobs.")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="A queue to take jobs from, in priority order; repeatable (default: BRIDGE_QUEUE).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this process's Prometheus metrics on this port "
    "(default: BRIDGE_WORKER_METRICS_PORT, 0: off).",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Interface of the metrics endpoint (default: BRIDGE_WORKER_METRICS_ADDRESS).",
)
def worker(
    burst: bool,
    scheduler: bool,
    worker_class: str | None,
    name: str | None,
    max_jobs: int | None,
    queues: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Run one RQ worker with the project's settings on the bridge queue (or each --queue)."""
    from workers.runtime import metrics
    from workers.runtime.worker import build_worker

    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        instance = build_worker(
            connection, settings, queues=list(queues) or None, name=name, cls=worker_class
        )
        metrics.serve(connection, settings, metrics_port, metrics_host)
        instance.work(
            burst=burst,
            with_scheduler=scheduler,
            max_jobs=max_jobs,
            logging_level=settings.log_level,
        )
