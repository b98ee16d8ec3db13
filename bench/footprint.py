"""Measure the memory footprint (RSS) of each role, for the resource requests in deploy/k8s.

    python -m bench.footprint [--seconds 5]

Starts a private redis-server, a receiver (`workfloo-bridge serve`) and an RQ worker as real
processes, samples VmRSS from /proc, and prints idle and under-load figures. The load is a bounded
burst of concurrent HTTP requests from this process; if the callback routes exist, it posts
callbacks, otherwise it calls /readyz (one Redis round trip per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from workers.core.crypto import generate_entry
from workers.sandbox.redis_server import RedisServer, free_port
from workers.sandbox.wait import wait_http

CALLBACK_KEY = "cb-3c2d937ca82850dca7e7da16d0d077fb45de94a0"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and its direct children (uvicorn or RQ work horses)."""
    total = rss_mib(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            with contextlib.suppress(FileNotFoundError, RuntimeError):  # the child just exited
                total += rss_mib(int(child))
    return total


def _bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found")
    return found


async def _load(base: str, seconds: float, concurrency: int, pid: int) -> tuple[int, float, float]:
    """Returns (requests, peak RSS MiB, requests/s)."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        probe = await client.post("/v1/kiban/status", content=b"{}", headers={"x-api-key": CALLBACK_KEY})
        use_callbacks = probe.status_code != 404
        count = 0
        peak = rss_mib(pid)
        deadline = time.monotonic() + seconds

        async def one(n: int) -> None:
            nonlocal count
            while time.monotonic() < deadline:
                if use_callbacks:
                    body = (
                        f'{{"id":"e{n}-{count}","status":"COMPLETED","executionId":"x{n}","event":"x"}}'
                    ).encode()
                    await client.post(
                        "/v1/kiban/status",
                        content=body,
                        headers={"x-api-key": CALLBACK_KEY, "content-type": "application/json"},
                    )
                else:
                    await client.get("/readyz")
                count += 1

        async def sample() -> None:
            nonlocal peak
            while time.monotonic() < deadline:
                peak = max(peak, rss_mib(pid))
                await asyncio.sleep(0.1)

        started = time.monotonic()
        await asyncio.gather(sample(), *(one(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
        print(f"load target: {'POST /v1/kiban/status' if use_callbacks else 'GET /readyz'}")
        return count, peak, count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with RedisServer() as redis_server:
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "BRIDGE_CALLBACK_KEYS": CALLBACK_KEY,
            "BRIDGE_DATA_KEYS": os.environ.get("BRIDGE_DATA_KEYS") or generate_entry("bench"),
            "BRIDGE_LOG_LEVEL": "WARNING",
        }
        port = free_port()
        receiver = subprocess.Popen(
            [_bin("workfloo-bridge"), "serve", "--port", str(port), "--internal-port", str(free_port())],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        worker = subprocess.Popen(
            [_bin("workfloo-bridge"), "worker", "--no-scheduler"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/healthz", timeout=15.0)
            time.sleep(2)
            receiver_idle = rss_mib(receiver.pid)
            worker_idle = tree_rss_mib(worker.pid)
            requests, peak, rate = asyncio.run(_load(base, args.seconds, args.concurrency, receiver.pid))
            receiver_after = rss_mib(receiver.pid)
            print(f"receiver RSS idle            {receiver_idle:7.1f} MiB")
            print(f"receiver RSS peak under load {peak:7.1f} MiB  ({requests} requests, {rate:.0f}/s,")
            print(f"{'':40}{args.concurrency} concurrent, load generator on the same cores)")
            print(f"receiver RSS after load      {receiver_after:7.1f} MiB")
            print(f"worker RSS idle              {worker_idle:7.1f} MiB")
        finally:
            for proc in (receiver, worker):
                proc.terminate()
            for proc in (receiver, worker):
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
