"""The consumer package on its own: installed alone into a fresh venv (its wheel with --no-deps, plus
redis-py from the locked environment, nothing else), its example service receives the events the
bridge's publisher writes to a real redis-server, and the bridge itself is not importable there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import ROOT
from tests.support.event_contract import check_stream
from workers.core.events import Event, EventType
from workers.core.settings import load_settings
from workers.fanout.publisher import Publisher
from workers.sandbox.wait import wait_until

CONSUMER = ROOT / "consumer"
EXAMPLE_ARGS = ["--group", "crm", "--type", "workfloo.*", "--type", "nip.failed"]


@pytest.fixture(scope="module")
def consumer_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the consumer package and redis-py, and no other distribution."""
    root = tmp_path_factory.mktemp("consumer-venv")
    wheels = root / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            wheels,
            CONSUMER,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    (wheel,) = wheels.glob("workfloo_bridge_consumer-*.whl")
    # This interpreter's pip installs into the new venv; --no-index: nothing can come from elsewhere.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # redis-py exactly as locked: the installed copy of this environment, linked in by a .pth file.
    locked = Path(root / "redis-only")
    locked.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in [site / "redis", *site.glob("redis-*.dist-info")]:
        (locked / entry.name).symlink_to(entry)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "locked-redis.pth").write_text(f"{locked}\n")
    return python


def test_the_package_installs_alone(consumer_venv: Path) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util as u, json;"
        "print(json.dumps({'dists': sorted(d.metadata['Name'] for d in m.distributions()),"
        "'requires': m.requires('workfloo-bridge-consumer'),"
        "'bridge': [n for n in ('workers', 'receiver', 'rq', 'pydantic', 'uvicorn') if u.find_spec(n)]}))"
    )
    result = subprocess.run(
        [consumer_venv, "-I", "-c", probe], check=True, capture_output=True, text=True, cwd="/", timeout=30
    )
    found = json.loads(result.stdout)
    assert found["dists"] == ["redis", "workfloo-bridge-consumer"]
    assert [r.split(">")[0].split("<")[0] for r in found["requires"]] == ["redis"]
    assert found["bridge"] == []


@pytest.fixture
def example(consumer_venv: Path, redis_url: str) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [consumer_venv, "-I", CONSUMER / "example" / "service.py", *EXAMPLE_ARGS],
        env={"REDIS_URL": redis_url, "PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert child.stdout is not None
    assert json.loads(child.stdout.readline()) == {"ready": "crm"}
    yield child
    if child.poll() is None:
        child.kill()
        child.wait(timeout=10)


def test_the_example_receives_what_the_bridge_publishes(
    example: subprocess.Popen[str], redis_client: redis.Redis, redis_url: str
) -> None:
    publisher = Publisher(redis_client, load_settings(redis_url=redis_url))
    finished = {"status": "SUCCESS", "decision": "approved", "decision_source": "decisionTree"}
    finished |= {"decision_detail": None, "cancelled": False, "has_name": True, "has_email": True}
    sent = [
        Event(type=EventType.NIP_SENT, execution_id="e1", data={"date": "d1", "link_id": None}),  # filtered
        Event(
            type=EventType.NIP_FAILED,
            execution_id="e1",
            data={
                "date": "d2",
                "link_id": None,
                "error_message": None,
                "recoverable": True,
                "resend": 1,
                "why": "will_resend",
            },
        ),
        Event(type=EventType.WORKFLOO_COMPLETED, execution_id="e1", data={**finished, "trigger": "status"}),
    ]
    for event in sent:
        assert publisher.publish(event)
    assert not check_stream(redis_client, "workfloo:events").problems  # what was sent fits the contract

    assert example.stdout is not None
    lines = [json.loads(example.stdout.readline()) for _ in range(2)]

    assert lines == [
        {"id": sent[1].id, "type": "nip.failed", "execution_id": "e1", "will_resend": True},
        {"id": sent[2].id, "type": "workfloo.completed", "execution_id": "e1", "decision": "approved",
         "hand_off": True},
    ]  # fmt: skip
    groups = {g["name"].decode(): g for g in redis_client.xinfo_groups("workfloo:events")}
    wait_until(lambda: redis_client.xinfo_groups("workfloo:events")[0]["pending"] == 0, timeout=5)
    assert groups["crm"]["entries-read"] == 3  # the filtered nip.sent was read and acknowledged too
    example.send_signal(signal.SIGTERM)
    assert example.wait(timeout=15) == 0


def test_the_bridge_runs_the_package_code_with_its_own_defaults() -> None:
    import workfloo_bridge_consumer.group as package

    from workers.core import keys
    from workers.core.settings import Settings
    from workers.fanout.consumer import Consumer

    assert issubclass(Consumer, package.GroupConsumer)  # one copy of the delivery logic
    assert package.DEAD_LETTER_STREAM == keys.DEAD_LETTER_STREAM
    assert package.groups_key("s") == keys.stream_groups("s")  # where retention reports a group's losses
    assert package.trimmed_unacked_key("s") == keys.stream_trimmed_unacked("s")
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults["events_stream"] == package.EVENTS_STREAM
    assert defaults["events_claim_idle_ms"] == package.CLAIM_IDLE_MS
    assert defaults["events_max_deliveries"] == package.MAX_DELIVERIES
    assert defaults["events_block_ms"] == package.BLOCK_MS
    assert defaults["events_stream_maxlen"] == package.DEAD_LETTER_MAXLEN


def test_the_example_receives_every_event_of_the_demo(
    consumer_venv: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    example = subprocess.Popen(
        [consumer_venv, "-I", CONSUMER / "example" / "service.py", "--group", "all"],
        env={"REDIS_URL": redis_url, "PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert example.stdout is not None
        assert json.loads(example.stdout.readline()) == {"ready": "all"}
        demo = subprocess.run(
            [
                Path(sys.executable).parent / "workfloo-bridge",
                "demo",
                "--redis-url",
                redis_url,
                "-n",
                "1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert demo.returncode == 0, demo.stderr[-2000:]
        published = json.loads(demo.stdout)["events_published"]
        stream_ids = [
            json.loads(fields[b"event"])["id"] for _, fields in redis_client.xrange("workfloo:events")
        ]
        assert published == len(stream_ids) > 10

        def caught_up() -> bool:
            [group] = redis_client.xinfo_groups("workfloo:events")
            return bool(group["entries-read"] == published and group["pending"] == 0)

        wait_until(caught_up, timeout=15, what="the example to handle every event")
        example.send_signal(signal.SIGTERM)
        out, _ = example.communicate(timeout=15)
        assert example.returncode == 0
        assert [json.loads(line)["id"] for line in out.splitlines()] == stream_ids
    finally:
        if example.poll() is None:
            example.kill()
            example.wait(timeout=10)
