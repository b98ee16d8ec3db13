"""uvicorn's httptools HTTP protocol with two guards uvicorn does not have: a deadline for the request
headers and a cap on their size.

uvicorn arms its keep-alive timer only after a response, and httptools keeps every header a client sends.
So a client that connects and trickles header bytes (slow headers), or sends megabytes of headers, would
hold a connection (and memory) for as long as it likes. Behind a proxy that already enforces both, the
guards cost nothing; exposed directly, they close such connections:

* headers not complete ``header_timeout`` seconds after the connection opened (or after the first byte
  of a further keep-alive request): ``408`` and close;
* more than ``max_header_bytes`` received before the headers end: ``431`` and close.

Use ``uvicorn.run(..., http="receiver.protocol:GuardedHttpToolsProtocol")`` (limits from the settings),
or ``http=guarded_protocol(settings)``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from workers.core.settings import Settings, get_settings


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float | None = None
    max_header_bytes: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout is None or self.max_header_bytes is None:
            settings = get_settings()
            self.header_timeout = settings.bridge_header_read_timeout_seconds
            self.max_header_bytes = settings.bridge_max_header_bytes
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_headers = False

    # -- header clock ----------------------------------------------------------------------------

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._in_headers = True
        self._header_bytes = 0
        assert self.header_timeout is not None
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _reject(self, status: bytes, message: bytes) -> None:
        self._stop_header_clock()
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
        )  # fmt: skip
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._reject(b"408 Request Timeout", b'{"error":"request_timeout","detail":"headers too slow"}')

    # -- protocol hooks --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        was_in_headers = self._in_headers
        if was_in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if not was_in_headers and self._in_headers:  # a keep-alive request began in this chunk
            self._header_bytes += len(data)
        assert self.max_header_bytes is not None
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._reject(
                b"431 Request Header Fields Too Large",
                b'{"error":"headers_too_large","detail":"request line and headers too large"}',
            )

    def on_message_begin(self) -> None:
        # The first request's clock started with the connection; a keep-alive request starts its own.
        if not self._in_headers:
            self._start_header_clock()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The guarded protocol with the limits of ``settings`` (for ``uvicorn.Config(http=...)``)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": settings.bridge_header_read_timeout_seconds,
            "max_header_bytes": settings.bridge_max_header_bytes,
        },
    )
