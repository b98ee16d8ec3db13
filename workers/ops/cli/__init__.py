"""The ``workfloo-bridge`` command line.

The receiver is started by import string (``receiver.app:create_app``) so that ``workers`` never imports
``receiver`` at module level.
"""

from __future__ import annotations

import click

from workers.core.settings import Settings
from workers.ops.cli.helpers import settings_or_exit

RECEIVER_FACTORY = "receiver.app:create_app"


def _settings() -> Settings:
    return settings_or_exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workfloo-bridge")
def main() -> None:
    """Kiban workfloo → Kompliant webhook receiver and event bridge."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", "processes", default=1, show_default=True, type=int, help="uvicorn processes.")
def serve(host: str, port: int, processes: int) -> None:
    """Run the receiver (HTTP edge) under uvicorn."""
    import uvicorn

    settings = _settings()
    if settings.redis_url is None:
        click.echo(
            "workfloo-bridge: REDIS_URL is not set (use `workfloo-bridge demo` for an embedded one)", err=True
        )
        raise SystemExit(2)
    uvicorn.run(
        RECEIVER_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=processes,
        log_config=None,
        access_log=False,
        # Header deadline and size cap uvicorn lacks (slow headers, header floods): receiver/protocol.py.
        http="receiver.protocol:GuardedHttpToolsProtocol",
        timeout_graceful_shutdown=settings.bridge_graceful_shutdown_seconds,
    )


def _register_ops() -> None:
    from workers.ops.cli.ops import register

    register(main)


_register_ops()


from workers.ops.cli.events import events  # noqa: E402

main.add_command(events)

# --- worker-side commands (workers/ops/cli/worker.py) ---
from workers.ops.cli.worker import dlq, scheduler, worker  # noqa: E402

main.add_command(worker)
main.add_command(scheduler)
main.add_command(dlq)
