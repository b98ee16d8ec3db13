"""Worker throughput: fork-per-job (``BridgeWorker``, RQ's ``Worker``) vs in-process (``BridgeSimpleWorker``).

Each job is one real vendor call (``GET status`` on the fake Kiban over loopback HTTP through the pooled
``KibanClient``), like most bridge jobs. For each class: enqueue N jobs, run one
``workfloo-bridge worker --burst`` process, time it, and subtract the start-up time of the same command on
an empty queue (measured in the same run). Prints jobs/s and the ratio in-process / fork.

    python -m bench.workers [--jobs 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from workers.fakes import kiban as fake_kiban
from workers.kiban.client import KibanClient, get_kiban_client
from workers.redis_server import RedisServer
from workers.serving import ServerThread
from workers.settings import get_settings

BIN = Path(sys.executable).parent / "workfloo-bridge"
ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-kiban-key"
CLASSES = {
    "fork (BridgeWorker)": "workers.worker.BridgeWorker",
    "in-process (BridgeSimpleWorker)": "workers.worker.BridgeSimpleWorker",
}


def poll_status(execution_id: str) -> str | None:
    """The benchmark job: one pooled HTTP call to (fake) Kiban."""
    return get_kiban_client(get_settings()).get_status(execution_id).status


def _burst(env: dict[str, str], worker_class: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(BIN), "worker", "--burst", "--no-scheduler", "--worker-class", worker_class],
        env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    with (
        RedisServer() as server,
        ServerThread(fake_kiban.create_app(KEY, default_scenario="approved")) as kiban,
    ):
        client = redis.Redis.from_url(server.url)
        with KibanClient(kiban.url, KEY) as direct:
            execution_id = direct.execute("bench-definition", scenario_id="approved")
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "KIBAN_BASE_URL": kiban.url,
            "KIBAN_API_KEY": KEY,
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        queue = Queue("workfloo", connection=client)
        results: dict[str, list[float]] = {name: [] for name in CLASSES}
        for _ in range(args.rounds):
            for name, worker_class in CLASSES.items():
                startup = _burst(env, worker_class)  # empty queue: process start-up only
                for _ in range(args.jobs):
                    queue.enqueue("bench.workers.poll_status", execution_id, result_ttl=60)
                elapsed = _burst(env, worker_class)
                assert queue.count == 0, "the burst worker left jobs behind"
                results[name].append(args.jobs / max(1e-6, elapsed - startup))
        medians: dict[str, Any] = {name: statistics.median(values) for name, values in results.items()}
        print(f"jobs per class per round: {args.jobs}, rounds: {args.rounds}, cores: {os.cpu_count()}")
        for name, rate in medians.items():
            print(f"{name:34s} {rate:8.1f} jobs/s")
        fork, simple = medians["fork (BridgeWorker)"], medians["in-process (BridgeSimpleWorker)"]
        print(f"in-process / fork ratio: {simple / fork:.2f}x")
        client.close()


if __name__ == "__main__":
    main()
