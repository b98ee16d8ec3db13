"""Intake benchmark: ``python -m bench.intake`` (``make bench``).

Starts a private redis-server (appendonly, fsync every second, as in production) and serves, one at a time
and each in its own uvicorn subprocess (one process, uvloop + httptools, like production):

1. the receiver (group commit, the default),
2. the receiver with ``BRIDGE_INTAKE_GROUP_COMMIT=false`` (one Redis call per request),
3. a no-op Starlette endpoint that reads the body and answers a small JSON (the baseline).

A load generator in another process drives authenticated NIP callbacks (every one a new event) over
keep-alive loopback connections with a raw-socket HTTP/1.1 client: first closed-loop at saturation
(accepted callbacks/s), then open-loop at a fixed 1,000 req/s (latency measured from each request's
scheduled send time, so queueing is counted). All figures come from the same run; ratios are against
the no-op endpoint. Bounded: about 40 s in total. The receivers inherit the environment, so
``BRIDGE_INTAKE_TRANSPORT=redis-py python -m bench.intake`` measures the other intake transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.core.crypto import generate_entry
from workers.sandbox.redis_server import RedisServer, free_port

KEY = "cb-0cb5babcf574ca3dca7f7da0ca285c84a2533c89"
EXECUTION_ID = "657118e1d511b6e54fe2a969"
RECEIVER_PATH = f"/v1/kiban/executions/{EXECUTION_ID}/nip-events"
NOOP_PATH = "/noop"

WARMUP_SECONDS = 1.0
SATURATION_SECONDS = 4.0
SATURATION_CONNECTIONS = 64
RATE = 1000.0
RATE_SECONDS = 4.0
RATE_CONNECTIONS = 64


# -- the baseline app -------------------------------------------------------------------------------


def noop_app() -> Starlette:
    """Same framework, same server, no work: reads the body, answers like the receiver does."""

    async def noop(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"accepted","event_id":"noop"}', media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route(NOOP_PATH, noop, methods=["POST"]), Route("/healthz", healthz)])


# -- load generator (runs in its own process) -------------------------------------------------------


class Requests:
    """Pre-built HTTP/1.1 requests, each a distinct NIP event (distinct ``date``)."""

    def __init__(self, path: str, tag: str) -> None:
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nx-api-key: {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.tag = tag.encode()
        self.counter = 0

    def next(self) -> bytes:
        self.counter += 1
        body = b'{"event":"SENT","date":"%s-%09d","linkId":"676b188a6ef8abaf775fef10"}' % (
            self.tag,
            self.counter,
        )
        return self.head + b"%d\r\n\r\n" % len(body) + body


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    start = lower.index(b"content-length:") + 15
    length = int(lower[start : lower.index(b"\r\n", start)])
    await reader.readexactly(length)
    return int(head[9:12])


async def _saturate(host: str, port: int, requests: Requests, seconds: float) -> dict[str, Any]:
    ok = other = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal ok, other
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                if await _round_trip(reader, writer, requests.next()) == 200:
                    ok += 1
                else:
                    other += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(SATURATION_CONNECTIONS)))
    elapsed = time.perf_counter() - started
    return {"ok": ok, "other": other, "seconds": elapsed, "per_second": ok / elapsed}


async def _fixed_rate(
    host: str, port: int, requests: Requests, rate: float, seconds: float
) -> dict[str, Any]:
    scheduled: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    other = 0

    async def worker() -> None:
        nonlocal other
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (due := await scheduled.get()) is not None:
                status = await _round_trip(reader, writer, requests.next())
                latencies.append(time.perf_counter() - due)
                if status != 200:
                    other += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(RATE_CONNECTIONS)]
    await asyncio.sleep(0.2)  # connections open
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        scheduled.put_nowait(due)
    for _ in workers:
        scheduled.put_nowait(None)
    await asyncio.gather(*workers)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "sent": total,
        "other": other,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000,
    }


async def _generate(port: int, path: str, tag: str, phase: str) -> dict[str, Any]:
    requests = Requests(path, tag)
    if phase == "saturation":
        warmup = await _saturate("127.0.0.1", port, requests, WARMUP_SECONDS)
        result = await _saturate("127.0.0.1", port, requests, SATURATION_SECONDS)
        result["sent_total"] = warmup["ok"] + warmup["other"] + result["ok"] + result["other"]
        return result
    return await _fixed_rate("127.0.0.1", port, requests, RATE, RATE_SECONDS)


def _generator_main(port: int, path: str, tag: str, phase: str) -> None:
    try:
        import uvloop

        result = uvloop.run(_generate(port, path, tag, phase))
    except ImportError:  # pragma: no cover
        result = asyncio.run(_generate(port, path, tag, phase))
    print(json.dumps(result))


# -- orchestration ----------------------------------------------------------------------------------


def _serve(factory: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # The receiver's public listener is this port (its internal one is not served here).
    env = {**env, "BRIDGE_PUBLIC_PORT": str(port), "BRIDGE_INTERNAL_PORT": str(free_port())}
    command = [
        sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, **env})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{factory} did not start")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell CPU cost from CPU contention."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(name: str, factory: str, path: str, env: dict[str, str]) -> dict[str, Any]:
    process, port = _serve(factory, env)

    def generate(phase: str) -> dict[str, Any]:
        output = subprocess.run(
            [sys.executable, "-m", "bench.intake", "--generate", str(port), path, f"{name}-{phase}", phase],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        result: dict[str, Any] = json.loads(output)
        return result

    try:
        cpu_before = _cpu_seconds(process.pid)
        saturation = generate("saturation")
        cpu = _cpu_seconds(process.pid) - cpu_before
        saturation["server_cpu_us_per_request"] = cpu / saturation["sent_total"] * 1e6
        rate = generate("rate")
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {"saturation": saturation, "rate": rate}


def _job_costs() -> tuple[float, float]:
    """Microseconds per job: (a) RQ's own create_job + enqueue_job on the recording pipeline, what a
    per-request RQ call would cost; (b) what the receiver does per request instead (job data with RQ's
    serializer + zlib, one timestamp), the rest being precomputed in the verified Lua template."""
    from receiver.intake.rqjob import JobRecorder, utc_stamp

    recorder = JobRecorder("workfloo")
    func = "workers.jobs.callbacks.handle_nip_event"
    script = recorder.script(func)
    payload = {
        "event_id": "nip-x",
        "kind": "nip",
        "execution_id": EXECUTION_ID,
        "link_id": "676b188a6ef8abaf775fef10",
        "received_at": "2026-11-22T23:00:00.000000Z",
        "event_type_header": None,
        "body": {"event": "SENT", "date": "2026-11-22T23:00:00Z", "linkId": "676b188a6ef8abaf775fef10"},
    }
    count = 3000
    started = time.perf_counter()
    for n in range(count):
        recorder.record(func, payload, f"nip-{n}", "nip callback")
    full = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for _ in range(count):
        script.data(payload)
        utc_stamp()
    template = (time.perf_counter() - started) / count * 1e6
    return full, template


def main() -> None:
    import redis

    started = time.monotonic()
    with RedisServer(appendonly=True) as server:
        base = {"REDIS_URL": server.url, "BRIDGE_CALLBACK_KEYS": KEY, "BRIDGE_LOG_LEVEL": "WARNING",
                "BRIDGE_DATA_KEYS": generate_entry("bench")}  # fmt: skip
        runs = {
            "receiver": _measure("gc", "receiver.app:create_app", RECEIVER_PATH, base),
            "receiver_per_request": _measure(
                "pr",
                "receiver.app:create_app",
                RECEIVER_PATH,
                {**base, "BRIDGE_INTAKE_GROUP_COMMIT": "false"},
            ),
            "noop": _measure("noop", "bench.intake:noop_app", NOOP_PATH, base),
        }
        jobs = redis.Redis.from_url(server.url).llen("rq:queue:workfloo")
    full_us, template_us = _job_costs()

    accepted = runs["receiver"]["saturation"]["ok"] + runs["receiver_per_request"]["saturation"]["ok"]
    print(f"intake benchmark ({time.monotonic() - started:.0f} s, {os.cpu_count()} cores shared)")
    header = f"{'':22}{'saturation req/s':>17}{'server CPU us/req':>19}{'p50 ms @1k/s':>14}"
    print(header + f"{'p99 ms @1k/s':>14}{'non-200':>9}")
    for name, run in runs.items():
        sat, rate = run["saturation"], run["rate"]
        print(
            f"{name:22}{sat['per_second']:17.0f}{sat['server_cpu_us_per_request']:19.1f}"
            f"{rate['p50_ms']:14.2f}{rate['p99_ms']:14.2f}{sat['other'] + rate['other']:9d}"
        )
    noop, receiver = runs["noop"]["saturation"], runs["receiver"]["saturation"]
    ratio = receiver["per_second"] / noop["per_second"]
    per_request = runs["receiver_per_request"]["saturation"]["per_second"] / noop["per_second"]
    cpu_ratio = noop["server_cpu_us_per_request"] / receiver["server_cpu_us_per_request"]
    p99 = runs["receiver"]["rate"]["p99_ms"]
    print(f"receiver / no-op throughput: {ratio:.0%} (target >= 40%); per-request mode: {per_request:.0%}")
    print(
        f"receiver / no-op by server CPU per request: {cpu_ratio:.0%} (the throughput one core would give; "
        "the raw ratio also carries Redis and the load generator competing for the same cores)"
    )
    print(f"receiver p99 at {RATE:.0f} req/s: {p99:.2f} ms (target < 10 ms)")
    print(
        f"job building per request: {template_us:.1f} us "
        f"(RQ create_job + enqueue_job would be {full_us:.1f} us)"
    )
    print(f"jobs in rq:queue:workfloo: {jobs} (every accepted callback, warm-up included: >= {accepted})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--generate", nargs=4, metavar=("PORT", "PATH", "TAG", "PHASE"), help=argparse.SUPPRESS
    )
    arguments = parser.parse_args()
    if arguments.generate:
        _generator_main(int(arguments.generate[0]), *arguments.generate[1:])
    else:
        main()
