"""``workfloo-bridge serve``: the receiver (HTTP edge) under uvicorn, on two listeners.

The public listener (``BRIDGE_PUBLIC_HOST``/``BRIDGE_PUBLIC_PORT``) takes Kiban's callbacks and
``/healthz``; the internal one (``BRIDGE_INTERNAL_HOST``/``BRIDGE_INTERNAL_PORT``) the commands, the
timeline, ``/readyz``, ``/metrics``, ``/openapi.json`` and the operator console (``/console``,
``workers.ops.console``). Both sockets are bound here and shared by every
uvicorn process; the app tells them apart by port.

The receiver is started by import string so that ``workers`` never imports ``receiver``: ``create_app``
below imports it by name and hands it the console's routes.
"""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any

import click

from workers.core.settings import get_settings
from workers.ops.cli.helpers import fail, settings_or_exit

RECEIVER_FACTORY = "workers.ops.cli.serve:create_app"


def create_app() -> Any:
    """uvicorn's factory in every serve process: the receiver with the operator console mounted on its
    internal listener."""
    from workers.ops.console import console_routes

    receiver = importlib.import_module("receiver.app")
    return receiver.create_app(internal_routes=console_routes)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    sock.set_inheritable(True)
    return sock


@click.command()
@click.option("--host", default=None, help="Public listener's interface (default BRIDGE_PUBLIC_HOST).")
@click.option("--port", default=None, type=int, help="Public listener's port (default BRIDGE_PUBLIC_PORT).")
@click.option("--internal-host", default=None, help="Internal listener's interface (BRIDGE_INTERNAL_HOST).")
@click.option(
    "--internal-port", default=None, type=int, help="Internal listener's port (BRIDGE_INTERNAL_PORT)."
)
@click.option("--workers", "processes", default=1, show_default=True, type=int, help="uvicorn processes.")
def serve(
    host: str | None, port: int | None, internal_host: str | None, internal_port: int | None, processes: int
) -> None:
    """Run the receiver (HTTP edge) under uvicorn: a public and an internal listener."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # The options become the settings every uvicorn process's app factory reads.
    for name, value in (
        ("BRIDGE_PUBLIC_HOST", host),
        ("BRIDGE_PUBLIC_PORT", port),
        ("BRIDGE_INTERNAL_HOST", internal_host),
        ("BRIDGE_INTERNAL_PORT", internal_port),
    ):
        if value is not None:
            os.environ[name] = str(value)
    get_settings.cache_clear()
    settings = settings_or_exit(need_redis=True)
    if settings.bridge_public_port == settings.bridge_internal_port:
        fail("the public and internal listeners need different ports")
    sockets = [
        _bind(settings.bridge_public_host, settings.bridge_public_port),
        _bind(settings.bridge_internal_host, settings.bridge_internal_port),
    ]
    config = uvicorn.Config(
        RECEIVER_FACTORY,
        factory=True,
        workers=processes,
        log_config=None,
        access_log=False,
        # Slow-client guards uvicorn lacks (header and request deadlines, header cap, connection limit,
        # close after an early answer): receiver/protocol.py.
        http="receiver.protocol:GuardedHttpToolsProtocol",
        timeout_graceful_shutdown=settings.bridge_graceful_shutdown_seconds,
    )
    server = uvicorn.Server(config)
    try:
        if processes > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if processes == 1 and not server.started:
        raise SystemExit(3)  # uvicorn's start-up failure code
