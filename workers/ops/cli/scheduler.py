"""``workfloo-bridge scheduler``: RQ's cron scheduler, which runs the reconciler sweep and the event
stream and timeline retention."""

from __future__ import annotations

import click

from workers.ops.cli.helpers import redis_or_exit, settings_or_exit


@click.command()
def scheduler() -> None:
    """Run RQ's cron scheduler: the reconciler sweep every BRIDGE_RECONCILE_INTERVAL_SECONDS, the event
    retention every BRIDGE_EVENTS_RETENTION_INTERVAL_SECONDS."""
    from rq.cron import CronScheduler

    from workers.fanout.retention import retain_events
    from workers.jobs.callbacks import job_options
    from workers.jobs.reconcile import reconcile_open_executions
    from workers.runtime.rq_internals import register_cron_job

    settings = settings_or_exit()
    with redis_or_exit(settings) as connection:
        cron = CronScheduler(connection=connection, logging_level=settings.log_level)
        options = job_options(settings)
        register_cron_job(
            cron,
            reconcile_open_executions,
            queue_name=settings.bridge_queue,
            interval=settings.reconcile_interval_seconds,
            job_timeout=options["job_timeout"],
            result_ttl=min(600, settings.job_result_ttl_seconds),
            failure_ttl=options["failure_ttl"],
            name="workfloo-reconcile",
        )
        register_cron_job(
            cron,
            retain_events,
            queue_name=settings.bridge_queue,
            interval=settings.bridge_events_retention_interval_seconds,
            job_timeout=options["job_timeout"],
            result_ttl=min(600, settings.job_result_ttl_seconds),
            failure_ttl=options["failure_ttl"],
            name="workfloo-events-retention",
        )
        cron.start()  # type: ignore[no-untyped-call]
