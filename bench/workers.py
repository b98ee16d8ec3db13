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
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import Job

from workers.core.contract import JOB_SERIALIZER
from workers.core.crypto import generate_entry
from workers.core.settings import get_settings
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import ServerThread
from workers.vendors.kiban.client import KibanClient, get_kiban_client

BIN = Path(sys.executable).parent / "workfloo-bridge"
ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-kiban-key"
CLASSES = {
    "fork (BridgeWorker)": "workers.runtime.worker.BridgeWorker",
    "in-process (BridgeSimpleWorker)": "workers.runtime.worker.BridgeSimpleWorker",
}


def poll_status(execution_id: str) -> str | None:
    """The benchmark job: one pooled HTTP call to (fake) Kiban."""
    return get_kiban_client(get_settings()).get_status(execution_id).status


def noop() -> None:
    """The baseline job: no I/O, so the difference is the worker model's own cost per job."""


def _burst(env: dict[str, str], worker_class: str) -> None:
    subprocess.run(
        [str(BIN), "worker", "--burst", "--no-scheduler", "--worker-class", worker_class],
        env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    from workers.sandbox.fakes import (
        kiban as fake_kiban,  # here, so a work-horse importing this module stays light
    )

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
            "BRIDGE_KIBAN_BASE_URL": kiban.url,
            "BRIDGE_KIBAN_API_KEY": KEY,
            "BRIDGE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "BRIDGE_DATA_KEYS": os.environ.get("BRIDGE_DATA_KEYS") or generate_entry("bench"),
        }
        queue = Queue("workfloo", connection=client, serializer=JOB_SERIALIZER)
        print(f"jobs per class per round: {args.jobs}, rounds: {args.rounds}, cores: {os.cpu_count()}")
        for label, func, job_args in (
            ("no-op job", "bench.workers.noop", ()),
            ("one Kiban GET status per job", "bench.workers.poll_status", (execution_id,)),
        ):
            results: dict[str, list[float]] = {name: [] for name in CLASSES}
            for _ in range(args.rounds):
                for name, worker_class in CLASSES.items():
                    jobs = [queue.enqueue(func, *job_args, result_ttl=600) for _ in range(args.jobs)]
                    _burst(env, worker_class)
                    assert queue.count == 0, "the burst worker left jobs behind"
                    done = [
                        j
                        for j in Job.fetch_many(
                            [j.id for j in jobs], connection=client, serializer=JOB_SERIALIZER
                        )
                        if j
                    ]
                    assert all(j.get_status() == "finished" for j in done), "a benchmark job failed"
                    first = min(j.started_at for j in done if j.started_at)
                    last = max(j.ended_at for j in done if j.ended_at)
                    # Rate between the first job's start and the last job's end: process start-up excluded.
                    results[name].append(len(done) / max(1e-6, (last - first).total_seconds()))
            medians: dict[str, Any] = {name: statistics.median(values) for name, values in results.items()}
            print(f"-- {label}")
            for name, rate in medians.items():
                print(f"   {name:34s} {rate:8.1f} jobs/s")
            fork, simple = medians["fork (BridgeWorker)"], medians["in-process (BridgeSimpleWorker)"]
            print(f"   in-process / fork ratio: {simple / fork:.2f}x")
        client.close()


if __name__ == "__main__":
    main()
