"""Settings for a CLI command: validated, or one line on stderr and exit 2; then the process's logging."""

from __future__ import annotations

import click

from workers.core.errors import SettingsError
from workers.core.log import configure_logging
from workers.core.settings import Settings, load_settings

EXIT_USAGE = 2


def settings_or_exit(*, configure_logs: bool = True, need_redis: bool = False) -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        click.echo(f"workfloo-bridge: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    if need_redis and settings.redis_url is None:
        click.echo("workfloo-bridge: REDIS_URL is not set", err=True)
        raise SystemExit(EXIT_USAGE)
    return settings
