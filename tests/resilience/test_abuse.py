"""Abuse: a fuzzer driven by the receiver's own OpenAPI document, and hostile input no HTTP client would
send (oversized and slow bodies, slow headers, deep nesting, invalid UTF-8, header floods).

Every case must end in a 4xx or a closed connection, never a 5xx or a crash (the same process answers the
next good request) and never a job (the RQ queue does not grow)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.resilience_helpers import (
    AUTH,
    KEY,
    queue_length,
    raw_exchange,
    receiver_settings,
    status_of,
)
from workers.sandbox.serving import ServerThread

EXECUTION_ID = "657118e1d511b6e54fe2a969"
NIP_PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
GOOD_NIP = b'{"event":"SENT","date":"2026-11-22T23:00:00Z","linkId":null}'
BODY_TIMEOUT = 1.0
HEADER_TIMEOUT = 1.0
MAX_BODY = 65536
MAX_HEADERS = 32768
# Bound for anything the server must close: far above the 1 s deadlines, far below "never".
CLOSE_WITHIN = 10.0
# Examples per fuzz run (two runs: with and without the key). Keeps the fuzz well under 30 s on 2 cores.
FUZZ_EXAMPLES = 400


@dataclass
class Target:
    server: ServerThread
    http: httpx.Client
    redis: redis.Redis

    @property
    def port(self) -> int:
        return self.server.port

    def assert_still_serving(self, jobs_before: int) -> None:
        """The process is up, no job was created by the abuse, and a good callback is still stored."""
        assert queue_length(self.redis) == jobs_before, "abusive input created a job"
        assert self.http.get("/healthz").status_code == 200
        stamp = f"2026-11-22T23:00:{time.monotonic_ns() % 60:02d}.{time.monotonic_ns()}Z"
        good = self.http.post(
            NIP_PATH,
            json={"event": "SENT", "date": stamp},
            headers=AUTH | {"content-type": "application/json"},
        )
        assert good.status_code == 200 and good.json()["status"] == "accepted", good.text
        assert queue_length(self.redis) == jobs_before + 1


@pytest.fixture
def target(
    serve_receiver: Callable[..., ServerThread], redis_client: redis.Redis, redis_url: str
) -> Iterator[Target]:
    config = receiver_settings(
        redis_url,
        bridge_body_read_timeout_seconds=BODY_TIMEOUT,
        bridge_header_read_timeout_seconds=HEADER_TIMEOUT,
        bridge_max_body_bytes=MAX_BODY,
        bridge_max_header_bytes=MAX_HEADERS,
    )
    server = serve_receiver(config)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield Target(server, client, redis_client)


def _request(path: str, body: bytes, *, extra: bytes = b"", content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _trickle(
    port: int, head: bytes, drip: bytes, interval: float, give_up: float
) -> tuple[bytes, bool, float]:
    """Send ``head``, then ``drip`` every ``interval`` s until the server answers or closes (or ``give_up``
    s pass). Returns (received, closed by the server, seconds)."""
    started = time.monotonic()
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        if head:
            sock.sendall(head)
        while time.monotonic() - started < give_up:
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    closed = True
                    break
                if not data:
                    closed = True
                    break
                received += data
                continue
            try:
                sock.sendall(drip)
            except OSError:
                closed = True
                break
    return received, closed, time.monotonic() - started


# -- fuzzing against the receiver's own OpenAPI document --------------------------------------------


@pytest.mark.parametrize("authenticated", [True, False], ids=["with-key", "without-key"])
def test_fuzz_against_own_openapi(target: Target, authenticated: bool, figures: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{target.server.internal_url}/openapi.json")
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    headers = AUTH if authenticated else {}
    counts: dict[int, int] = {}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: Any) -> None:
        public = case.path.startswith("/v1/kiban/") or case.path == "/healthz"  # the route's listener
        base = target.server.url if public else target.server.internal_url
        response = case.call(base_url=base, headers=headers, timeout=10)
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)

    fuzz()
    total = sum(counts.values())
    label = "with key" if authenticated else "without key"
    figures.add(f"requests fuzzed ({label})", total, section="abuse")
    figures.add(f"answers ({label})", " ".join(f"{k}:{v}" for k, v in sorted(counts.items())), "abuse")
    assert total >= FUZZ_EXAMPLES // 2, "the fuzzer sent fewer requests than expected"
    assert not any(code >= 500 for code in counts)
    if not authenticated:
        assert queue_length(target.redis) == 0, "an unauthenticated request created a job"
    target.assert_still_serving(queue_length(target.redis))


# -- oversized bodies -------------------------------------------------------------------------------


def test_oversized_declared_body_is_refused_at_once(target: Target) -> None:
    head = _request(NIP_PATH, b"{", content_length=50 * 1024 * 1024)
    received, closed, _ = raw_exchange(target.port, [head], read_timeout=CLOSE_WITHIN)
    assert status_of(received) == 413, received[:200]
    assert closed, "the connection stayed open after a 413"
    target.assert_still_serving(0)


def test_oversized_chunked_body_is_cut_off_while_streaming(target: Target) -> None:
    head = (
        f"POST {NIP_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    # 64 MiB offered; the server must stop it after ~64 KiB.
    received, closed, _ = raw_exchange(target.port, [head] + [piece] * 4096, read_timeout=CLOSE_WITHIN)
    assert closed
    # The 413 may be lost to a reset if we were still writing when the server closed: both are refusals.
    assert status_of(received) in (413, None), received[:200]
    target.assert_still_serving(0)


# -- slow bodies and slow headers -------------------------------------------------------------------


def test_slow_body_gets_408_and_is_closed(target: Target, figures: Any) -> None:
    head = _request(NIP_PATH, GOOD_NIP[:1], content_length=len(GOOD_NIP))
    # One byte every 0.2 s would take 12 s; the 1 s body deadline must cut it.
    received, closed, seconds = _trickle(target.port, head, b" ", 0.2, give_up=CLOSE_WITHIN)
    assert closed, f"a slow body held the connection for {seconds:.1f} s"
    assert status_of(received) == 408, received[:200]
    assert b"request_timeout" in received
    figures.add("slow body closed after s", seconds, section="abuse")
    target.assert_still_serving(0)


def test_stalled_body_gets_408_and_is_closed(target: Target) -> None:
    head = _request(NIP_PATH, GOOD_NIP[:10], content_length=len(GOOD_NIP))
    received, closed, _ = raw_exchange(target.port, [head], read_timeout=CLOSE_WITHIN)
    assert closed and status_of(received) == 408, received[:200]
    target.assert_still_serving(0)


def test_slow_headers_are_closed(target: Target, figures: Any) -> None:
    head = f"POST {NIP_PATH} HTTP/1.1\r\nhost: x\r\n".encode()
    received, closed, seconds = _trickle(target.port, head, b"x-pad: y\r\n", 0.2, give_up=CLOSE_WITHIN)
    assert closed, f"slow headers held the connection for {seconds:.1f} s"
    assert status_of(received) == 408, received[:200]
    figures.add("slow headers closed after s", seconds, section="abuse")
    target.assert_still_serving(0)


def test_silent_connection_is_closed(target: Target) -> None:
    received, closed, _ = raw_exchange(target.port, [], read_timeout=CLOSE_WITHIN)
    assert closed, "a connection that never sent a byte stayed open"
    assert status_of(received) in (408, None)
    target.assert_still_serving(0)


def test_keep_alive_request_after_a_good_one_gets_its_own_header_deadline(target: Target) -> None:
    first = _request(NIP_PATH, GOOD_NIP)
    # The first request is answered; the second never finishes its headers.
    received, closed, _ = _trickle(
        target.port, first + b"POST / HTTP/1.1\r\n", b"x-a: b\r\n", 0.2, CLOSE_WITHIN
    )
    assert closed
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert b"408" in received.split(b"\r\n\r\n", 1)[1], "the second request was not answered 408"
    target.assert_still_serving(1)


# -- bodies that parse badly ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 100_000, 413),  # 100k '[' is over the 64 KiB limit
        (b"[" * 60_000, 400),  # under the limit: the parser's depth limit refuses it
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400),
        (b'{"event":"SENT","date":"\xff\xfe\xfd"}', 400),  # invalid UTF-8
        (b'{"event":"SENT","date":"\xed\xa0\x80"}', 400),  # a UTF-8-encoded surrogate
        (b"\xef\xbb\xbf" + GOOD_NIP, 400),  # BOM
        (b'{"event":"SENT","date":"x","date":"y"' + b", " * 10 + b"}", 400),
        (b'{"event": NaN, "date": "x"}', 400),
        (b"", 400),
        (b"null", 422),
        (b'"' + b"a" * 60_000 + b'"', 422),
        (b'{"event":"SENT","date":"' + b"9" * 60_000 + b'"}', 422),
    ],
    ids=lambda v: str(v)[:20] if isinstance(v, bytes) else str(v),
)
def test_hostile_bodies(target: Target, body: bytes, status: int) -> None:
    received, _, _ = raw_exchange(
        target.port, [_request(NIP_PATH, body)], read_timeout=CLOSE_WITHIN, stop_after_response=True
    )
    assert status_of(received) == status, received[:300]
    target.assert_still_serving(0)


def test_invalid_utf8_in_path_and_headers(target: Target) -> None:
    cases = [
        b"POST /v1/kiban/executions/%ff%fe/nip-events HTTP/1.1\r\nhost: x\r\nx-api-key: " + KEY.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(GOOD_NIP)).encode()
        + b"\r\n\r\n" + GOOD_NIP,
        b"POST " + NIP_PATH.encode() + b" HTTP/1.1\r\nhost: x\r\nx-api-key: \xff\xfe\r\n"
        b"content-type: application/json\r\ncontent-length: " + str(len(GOOD_NIP)).encode()
        + b"\r\n\r\n" + GOOD_NIP,
    ]  # fmt: skip
    answers = []
    for raw in cases:
        received, closed, _ = raw_exchange(target.port, [raw], read_timeout=5.0, stop_after_response=True)
        answers.append(status_of(received))
        assert (status_of(received) or 0) // 100 == 4 or (closed and not received), received[:300]
    assert answers[1] == 401
    target.assert_still_serving(0)


def test_broken_framing(target: Target) -> None:
    cases = [
        _request(NIP_PATH, GOOD_NIP, extra=b"transfer-encoding: chunked\r\n"),  # CL + TE
        _request(NIP_PATH, GOOD_NIP).replace(b"content-length: ", b"content-length: 1x"),
        _request(NIP_PATH, GOOD_NIP).replace(b"content-length: ", b"content-length: -"),
        _request(NIP_PATH, GOOD_NIP[:-5], content_length=len(GOOD_NIP) - 5) + b"SMUGGLED",
        b"GARBAGE\r\n\r\n",
        b"POST " + b"/a" * 20_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
    ]
    for raw in cases:
        received, closed, _ = raw_exchange(target.port, [raw], read_timeout=5.0, stop_after_response=True)
        assert (status_of(received) or 0) // 100 == 4 or (closed and not received), received[:300]
    target.assert_still_serving(0)


# -- header floods ----------------------------------------------------------------------------------


def test_many_small_headers_under_the_cap_are_served(target: Target) -> None:
    extra = b"".join(b"x-h%d: v\r\n" % i for i in range(1500))  # ~16 KiB
    received, _, _ = raw_exchange(
        target.port, [_request(NIP_PATH, GOOD_NIP, extra=extra)], read_timeout=5, stop_after_response=True
    )
    assert status_of(received) == 200, received[:300]
    target.assert_still_serving(1)


@pytest.mark.parametrize(
    "extra",
    [
        b"".join(b"x-h%d: v\r\n" % i for i in range(20_000)),  # ~250 KiB of small headers
        b"x-big: " + b"a" * (2 * 1024 * 1024) + b"\r\n",  # one 2 MiB header
        b"".join(b"x-api-key: wrong-%d\r\n" % i for i in range(5_000)),  # key-guessing flood
    ],
    ids=["20k-headers", "2MiB-header", "5k-key-headers"],
)
def test_header_flood_gets_431_and_is_closed(target: Target, extra: bytes) -> None:
    raw = _request(NIP_PATH, GOOD_NIP, extra=extra)
    pieces = [raw[i : i + 65536] for i in range(0, len(raw), 65536)]
    received, closed, _ = raw_exchange(target.port, pieces, read_timeout=CLOSE_WITHIN)
    assert closed
    assert status_of(received) in (431, None), received[:300]
    target.assert_still_serving(0)


def test_many_connections_of_slow_headers_are_all_closed(target: Target) -> None:
    socks = [socket.create_connection(("127.0.0.1", target.port)) for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"POST / HTTP/1.1\r\n")
        deadline = time.monotonic() + CLOSE_WITHIN
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(open_, [], [], 0.5)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data or b"\r\n\r\n" in data:
                    open_.remove(sock)
        assert not open_, f"{len(open_)} of 50 slow-header connections still open"
    finally:
        for sock in socks:
            sock.close()
    target.assert_still_serving(0)
