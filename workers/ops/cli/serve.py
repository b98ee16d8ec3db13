"""``workfloo-bridge serve``: the receiver (HTTP edge) under uvicorn.

The receiver is started by import string so that ``workers`` never imports ``receiver``.
"""

from __future__ import annotations

import click

from workers.ops.cli.helpers import settings_or_exit

RECEIVER_FACTORY = "receiver.app:create_app"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", "processes", default=1, show_default=True, type=int, help="uvicorn processes.")
def serve(host: str, port: int, processes: int) -> None:
    """Run the receiver (HTTP edge) under uvicorn."""
    import uvicorn

    settings = settings_or_exit(need_redis=True)
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
