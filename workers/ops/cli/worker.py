"""CLI commands for the worker side: ``worker``, ``scheduler`` and ``dlq list|replay``."""

from __future__ import annotations

import json
import sys

import click
import redis

from workers.core.settings import Settings
from workers.ops.cli.helpers import settings_or_exit
from workers.runtime import dead_letters


def _settings() -> Settings:
    return settings_or_exit(need_redis=True)


def _redis(settings: Settings) -> redis.Redis:
    """Any supported REDIS_URL form (plain, TLS, Sentinel); RQ raises the socket timeout it needs."""
    from workers.core.redis_client import redis_from_url

    assert settings.redis_url is not None
    return redis_from_url(settings.redis_url, settings=settings)


@click.command()
@click.option("--burst", is_flag=True, help="Quit when the queue is empty (scheduled jobs due now run too).")
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also run RQ's scheduler (retries with backoff and NIP resends are scheduled jobs).",
)
@click.option("--worker-class", "worker_class", default=None, help="Override WORKER_CLASS.")
@click.option("--name", default=None, help="Worker name (default: random).")
@click.option("--max-jobs", type=int, default=None, help="Quit after this many jobs.")
def worker(
    burst: bool, scheduler: bool, worker_class: str | None, name: str | None, max_jobs: int | None
) -> None:
    """Run one RQ worker on the bridge queue with the project's settings."""
    from workers.runtime.worker import build_worker

    settings = _settings()
    instance = build_worker(_redis(settings), settings, name=name, cls=worker_class)
    instance.work(
        burst=burst,
        with_scheduler=scheduler,
        max_jobs=max_jobs,
        logging_level=settings.log_level,
    )


@click.command()
def scheduler() -> None:
    """Run RQ's cron scheduler: the reconciler sweep every RECONCILE_INTERVAL_SECONDS."""
    from rq.cron import CronScheduler

    from workers.jobs.callbacks import job_options
    from workers.jobs.reconcile import reconcile_open_executions

    settings = _settings()
    cron = CronScheduler(connection=_redis(settings), logging_level=settings.log_level)
    options = job_options(settings)
    cron.register(
        reconcile_open_executions,
        queue_name=settings.bridge_queue,
        interval=settings.reconcile_interval_seconds,
        job_timeout=options["job_timeout"],
        result_ttl=min(600, settings.job_result_ttl_seconds),
        failure_ttl=options["failure_ttl"],
        name="workfloo-reconcile",
    )
    cron.start()  # type: ignore[no-untyped-call]


@click.group()
def dlq() -> None:
    """Dead letters (RQ's failed-job registry of the bridge queue)."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def dlq_list(as_json: bool) -> None:
    """List dead letters: id, function, failed at, reason, execution id."""
    settings = _settings()
    letters = dead_letters.list_dead_letters(_redis(settings), settings.bridge_queue)
    if as_json:
        click.echo(json.dumps([letter.as_dict() for letter in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job id", "function", "failed at", "reason", "execution id", "replays")
    for letter in letters:
        table.add_row(
            letter.job_id,
            letter.function or "",
            letter.failed_at or "",
            letter.reason,
            letter.execution_id or "",
            str(letter.replays),
        )
    Console(width=200).print(table)


@dlq.command("replay")
@click.argument("job_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dlq_replay(job_id: str | None, replay_all: bool) -> None:
    """Requeue one dead letter (same job id) or all of them."""
    if bool(job_id) == replay_all:
        raise click.UsageError("give a JOB_ID or --all")
    settings = _settings()
    connection = _redis(settings)
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
        click.echo(f"workfloo-bridge: {exc}", err=True)
        sys.exit(1)
    click.echo(f"replayed {job_id}")
