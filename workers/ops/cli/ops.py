"""Operator commands: ``demo``, ``status``, ``check`` and ``timeline``.

Exit codes, the same for every command: 0 all good, 1 a problem was found (an unreachable dependency,
a failed demo application, an unknown execution), 2 usage or configuration error. ``--json`` prints one
JSON document on stdout for scripts; human output goes to stdout too, diagnostics to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
import redis
from rich.console import Console

from workers.core.settings import Settings, SettingsError, load_settings
from workers.ops.checks import run_checks, safe_url
from workers.ops.cli.helpers import settings_or_exit
from workers.ops.render import print_checks, print_status, timeline_table
from workers.ops.status import collect_status

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"workfloo-bridge: {message}", err=True)
    raise SystemExit(code)


def _load(configure: bool = True) -> Settings:
    return settings_or_exit(configure_logs=configure)


def _redis_or_exit(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        _fail("REDIS_URL is not set (use `workfloo-bridge demo` for an embedded stack)", EXIT_USAGE)
    from workers.core.redis_client import RedisUrlError, redis_from_url

    timeout = max(settings.redis_timeout_seconds, 2.0)
    try:
        return redis_from_url(
            settings.redis_url, settings=settings, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    except (RedisUrlError, ValueError) as exc:
        _fail(f"invalid setting REDIS_URL: {exc}", EXIT_USAGE)


def _print_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--recent", default=10, show_default=True, type=click.IntRange(0, 1000), help="Recent events.")
def status(as_json: bool, recent: int) -> None:
    """Queue depths, started/failed jobs, workers, recent events and consumer-group lag.

    Exit 0 when Redis answered, 1 when it could not be reached, 2 on a configuration error.
    """
    settings = _load()
    client = _redis_or_exit(settings)
    try:
        report = collect_status(client, settings, recent=recent)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        _fail(f"cannot reach Redis at {safe_url(settings.redis_url)}: {exc}", EXIT_PROBLEM)
    finally:
        client.close()
    if as_json:
        _print_json(report)
    else:
        print_status(_console(), report)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check(as_json: bool) -> None:
    """Validate the settings and reach Redis, Kiban and Kompliant with harmless calls.

    Prints what is wrong in plain words. Exit 0 when everything works, 1 when a check failed, 2 when the
    settings cannot be read at all.
    """
    settings = _load()
    results = run_checks(settings)
    ok = all(r.ok for r in results)
    if as_json:
        _print_json({"ok": ok, "checks": [r.as_dict() for r in results]})
    else:
        print_checks(_console(), results)
    if not ok:
        raise SystemExit(EXIT_PROBLEM)


# --- timeline -----------------------------------------------------------------------------------


@click.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON.")
def timeline(execution_id: str, as_json: bool) -> None:
    """Every event of one application, in order, with the time between steps.

    Exit 1 when the bridge has no event for EXECUTION_ID.
    """
    from workers.core.timeline import read_timeline

    settings = _load()
    client = _redis_or_exit(settings)
    try:
        result = read_timeline(client, execution_id)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        _fail(f"cannot reach Redis at {safe_url(settings.redis_url)}: {exc}", EXIT_PROBLEM)
    finally:
        client.close()
    if as_json:
        _print_json(result)
    elif result["count"]:
        console = _console()
        console.print(timeline_table(execution_id, result["events"]))
        console.print(f"{result['count']} events over {result['duration_ms'] / 1000:.2f} s")
    if not result["count"]:
        if not as_json:
            click.echo(f"no events for execution {execution_id}", err=True)
        raise SystemExit(EXIT_PROBLEM)


# --- demo ---------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--applications",
    "-n",
    default=4,
    show_default=True,
    type=click.IntRange(0, 200),
    help="Applications to drive; cycles approved, rejected, nip-error, duplicate-storm.",
)
@click.option("--keep-running", is_flag=True, help="Leave the stack up afterwards until Ctrl-C.")
@click.option("--redis-url", default=None, help="Use this Redis instead of an embedded one.")
@click.option("--workers", "worker_count", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option(
    "--timeout", default=45.0, show_default=True, type=float, help="Seconds to wait for all applications."
)
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON at the end.")
def demo(
    applications: int,
    keep_running: bool,
    redis_url: str | None,
    worker_count: int,
    timeout: float,
    log_dir: Path | None,
    as_json: bool,
) -> None:
    """Run the whole bridge on an embedded stack and drive applications through the real flow.

    Needs no configuration. Exit 0 when every application reached its expected outcome, 1 otherwise,
    130 when interrupted before the end.
    """
    from workers.sandbox.demo.runner import run_demo

    if redis_url is not None:
        try:
            load_settings(redis_url=redis_url)
        except SettingsError as exc:
            _fail(str(exc).replace("REDIS_URL", "--redis-url"), EXIT_USAGE)
    code = run_demo(
        applications=applications,
        keep_running=keep_running,
        redis_url=redis_url,
        workers=worker_count,
        timeout=timeout,
        log_dir=log_dir,
        as_json=as_json,
    )
    raise SystemExit(code)


COMMANDS = (demo, status, check, timeline)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
