"""``workfloo-bridge events tail``: read the durable event stream, for people.

``tail`` never joins a consumer group (it only uses ``XRANGE``/``XREAD``), so it cannot take events away
from, or acknowledge them for, a service.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import redis

from workers.core.events import matches
from workers.ops.cli.helpers import redis_or_exit, settings_or_exit
from workers.ops.render import event_line

_STREAM_ID = re.compile(r"^\d+(-\d+)?$")
_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_BATCH = 500
_BLOCK_MS = 1000


def parse_since(value: str, now: datetime | None = None) -> tuple[str, bool]:
    """``(start id, exclusive)`` for ``--since``: a stream id (exclusive: what came after it), an RFC 3339
    time or a relative ``30s``/``10m``/``2h``/``1d`` (inclusive)."""
    value = value.strip()
    if _STREAM_ID.match(value):
        return value, True
    relative = _RELATIVE.match(value)
    if relative:
        when = (now or datetime.now(UTC)) - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    else:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(
                "expected a stream id (1700000000000-0), an RFC 3339 time or a relative time like 10m or 2h"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return f"{max(0, int(when.timestamp() * 1000))}-0", False


def _history(client: redis.Redis, stream: str, start: str, exclusive: bool) -> Iterator[tuple[bytes, Any]]:
    cursor = f"({start}" if exclusive else start
    while True:
        batch: Any = client.xrange(stream, min=cursor, max="+", count=_BATCH)
        yield from batch
        if len(batch) < _BATCH:
            return
        cursor = "(" + batch[-1][0].decode()


def _recent(client: redis.Redis, stream: str, lines: int, patterns: list[str]) -> list[tuple[bytes, Any]]:
    """The ``lines`` latest entries whose type passes ``patterns``, oldest first: read backwards in
    batches until that many matched or the stream's start (the stream is bounded by its retention)."""
    if lines <= 0:
        return []
    found: list[tuple[bytes, Any]] = []
    cursor = "+"
    while len(found) < lines:
        batch: Any = client.xrevrange(stream, max=cursor, min="-", count=_BATCH if patterns else lines)
        for entry_id, fields in batch:
            if matches(patterns, fields.get(b"type", b"").decode()):
                found.append((entry_id, fields))
                if len(found) == lines:
                    break
        if len(batch) < (_BATCH if patterns else lines):
            break
        cursor = "(" + batch[-1][0].decode()
    return found[::-1]


def _newer(a: str, b: str) -> bool:
    """Stream id ``a`` is after ``b``."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


@click.group()
def events() -> None:
    """Read the durable event stream."""


@events.command()
@click.option(
    "--type", "patterns", multiple=True, metavar="PATTERN", help="Only these types (nip.*); repeatable."
)
@click.option("--since", help="Start after a stream id, or at an RFC 3339 time or a relative 10m / 2h.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="Print envelopes as JSON, one per line.")
@click.option(
    "--lines", "-n", default=20, show_default=True,
    help="Without --since: recent events shown (counted after the --type filter).",
)  # fmt: skip
@click.option("--limit", type=int, default=None, help="Stop after printing this many events.")
def tail(
    patterns: tuple[str, ...], since: str | None, follow: bool, as_json: bool, lines: int, limit: int | None
) -> None:
    """Print events from the stream (read-only: no consumer group, nothing acknowledged)."""
    start = parse_since(since) if since else None
    settings = settings_or_exit()
    stream = settings.events_stream
    printed = 0

    def emit(entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Print one entry when it passes the filter; False once ``limit`` is reached."""
        nonlocal printed
        if not matches(list(patterns), fields.get(b"type", b"").decode()):
            return True
        if as_json:
            click.echo(fields.get(b"event", b"{}").decode())
        else:
            click.echo(event_line(entry_id.decode(), fields))
        printed += 1
        return limit is None or printed < limit

    # The read timeout outlasts the XREAD block; connecting keeps the configured deadline.
    with redis_or_exit(
        settings,
        socket_timeout=_BLOCK_MS / 1000 + 5,
        socket_connect_timeout=settings.redis_timeout_seconds,
    ) as client:
        try:
            newest: Any = client.xrevrange(stream, count=1)
            last_id = newest[0][0].decode() if newest else "0-0"
            if start is not None:
                history: Any = _history(client, stream, *start)
            else:
                history = _recent(client, stream, lines, list(patterns))
            for entry_id, fields in history:
                if _newer(entry_id.decode(), last_id):
                    last_id = entry_id.decode()
                if not emit(entry_id, fields):
                    return
            while follow:
                reply: Any = client.xread({stream: last_id}, count=_BATCH, block=_BLOCK_MS)
                for entry_id, fields in reply[0][1] if reply else []:
                    last_id = entry_id.decode()
                    if not emit(entry_id, fields):
                        return
        except KeyboardInterrupt:
            return
