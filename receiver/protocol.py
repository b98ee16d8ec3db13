"""uvicorn's httptools HTTP protocol with the guards against slow and abusive clients uvicorn does not
have.

uvicorn arms its keep-alive timer only after a response, keeps every header a client sends, has no
deadline for a request body and keeps a connection open after answering a request whose body it has not
read. So a client that trickles header or body bytes, sends megabytes of headers, or gets a quick 401 and
then drips the body it announced, would hold a connection (and memory) for as long as it likes. Behind a
proxy that already enforces these, the guards cost nothing; exposed directly, they close such
connections:

* headers not complete ``header_timeout`` seconds after the connection opened (or after the first byte
  of a further keep-alive request): ``408`` and close;
* the whole request, headers and body, not received ``request_deadline`` seconds after that same start:
  ``408`` and close (or just close, once an answer has started) — one absolute deadline, so a client
  cannot spend the header allowance and then the body allowance;
* more than ``max_header_bytes`` of request line and headers, however the bytes arrive (one read or
  many): ``431`` and close;
* an answer sent before the request's body was fully received (a ``401`` to a wrong key, a ``413``,
  any early error) ends with ``connection: close``: the rest of the body is never waited for;
* more than ``max_connections`` open connections in the process: the new one gets ``503`` and is closed
  at once.

Use ``uvicorn.run(..., http="receiver.protocol:GuardedHttpToolsProtocol")`` (limits from the settings),
or ``http=guarded_protocol(settings)``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from workers.core.settings import Settings, get_settings

_HEADER_LINE_OVERHEAD = 4  # ": " and CRLF of each header line


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing at once (httptools reports it as a parser error)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float | None = None
    request_deadline: float | None = None
    max_header_bytes: int | None = None
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout is None or self.max_header_bytes is None:
            settings = get_settings()
            self.header_timeout = settings.bridge_header_read_timeout_seconds
            self.request_deadline = settings.bridge_request_deadline_seconds
            self.max_header_bytes = settings.bridge_max_header_bytes
            self.max_connections = settings.bridge_max_connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # raw bytes received while in headers (a header still being sent)
        self._parsed_header_bytes = 0  # request line and complete headers, as parsed
        self._in_headers = False
        self._in_request = False  # from the request's start until its body is fully received
        self._too_large = False
        self._request_cycle: Any = None  # the cycle of the request the clocks time (once its headers are in)

    # -- clocks ----------------------------------------------------------------------------------

    def _start_request_clocks(self) -> None:
        self._stop_clocks()
        self._in_headers = self._in_request = True
        self._request_cycle = None
        self._header_bytes = self._parsed_header_bytes = 0
        assert self.header_timeout is not None
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        if self.request_deadline is not None:
            self._deadline_timer = self.loop.call_later(self.request_deadline, self._request_too_slow)

    def _stop_header_clock(self) -> None:
        self._in_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _stop_clocks(self) -> None:
        self._stop_header_clock()
        self._in_request = False
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _reject(self, status: bytes, message: bytes) -> None:
        self._stop_clocks()
        if self.transport.is_closing():
            return
        if self._request_cycle is None or not self._request_cycle.response_started:
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
            )  # fmt: skip
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._reject(b"408 Request Timeout", b'{"error":"request_timeout","detail":"headers too slow"}')

    def _request_too_slow(self) -> None:
        self._deadline_timer = None
        if self._in_request:
            self._reject(b"408 Request Timeout", b'{"error":"request_timeout","detail":"request too slow"}')

    def _headers_too_large(self) -> None:
        self._reject(
            b"431 Request Header Fields Too Large",
            b'{"error":"headers_too_large","detail":"request line and headers too large"}',
        )

    def _count_parsed(self, size: int) -> None:
        self._parsed_header_bytes += size
        assert self.max_header_bytes is not None
        if self._parsed_header_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge

    # -- protocol hooks --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._reject(
                b"503 Service Unavailable", b'{"error":"overloaded","detail":"too many connections"}'
            )
            return
        self._start_request_clocks()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clocks()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        was_in_headers = self._in_headers
        if was_in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if not was_in_headers and self._in_headers:  # a keep-alive request began in this chunk
            self._header_bytes += len(data)
        assert self.max_header_bytes is not None
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._headers_too_large()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # the parser stopped on the header cap, not on malformed input
            self._headers_too_large()
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        # The first request's clocks started with the connection; a keep-alive request starts its own.
        if not self._in_request:
            self._start_request_clocks()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + _HEADER_LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()
        cycle = self._request_cycle = self.cycle
        if cycle is None:
            return
        send = cycle.send

        async def send_closing_early(message: Any) -> None:
            # An answer before the whole body arrived: close after it instead of waiting for the rest.
            if message["type"] == "http.response.start" and cycle.more_body:
                cycle.keep_alive = False
            await send(message)

        cycle.send = send_closing_early  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        self._stop_clocks()
        super().on_message_complete()


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The guarded protocol with the limits of ``settings`` (for ``uvicorn.Config(http=...)``)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": settings.bridge_header_read_timeout_seconds,
            "request_deadline": settings.bridge_request_deadline_seconds,
            "max_header_bytes": settings.bridge_max_header_bytes,
            "max_connections": settings.bridge_max_connections,
        },
    )
