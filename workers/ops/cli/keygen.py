"""``workfloo-bridge keygen``: a fresh data key for ``BRIDGE_DATA_KEYS``."""

from __future__ import annotations

import click

from workers.core.crypto import KID_RE, generate_entry
from workers.ops.cli.helpers import EXIT_USAGE, fail


@click.command()
@click.option("--kid", default=None, help="Key id (1-32 letters, digits, - or _); default: random.")
def keygen(kid: str | None) -> None:
    """Print one new ``kid:base64`` AES-256 key for BRIDGE_DATA_KEYS (32 random bytes from the OS).

    To rotate, list it second (``BRIDGE_DATA_KEYS=old,new``) on every process, then first, then drop the
    old key once no job or NIP sealed under it remains.
    """
    if kid is not None and not KID_RE.fullmatch(kid):
        fail("--kid must be 1-32 letters, digits, - or _", EXIT_USAGE)
    click.echo(generate_entry(kid))
