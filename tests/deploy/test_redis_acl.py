"""deploy/redis/users.acl on a real redis-server: each role's user can do its work and nothing more, and
a whole application runs with one ACL user per role."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests import ROOT
from workers.core import keys
from workers.core.settings import load_settings
from workers.sandbox.redis_server import RedisServer
from workers.sandbox.serving import ServerThread
from workers.sandbox.stack import Stack, StackConfig, StackKeys
from workers.sandbox.wait import wait_until

ACL_TEMPLATE = ROOT / "deploy" / "redis" / "users.acl"
ROLES = ("receiver", "worker", "scheduler", "operator")
CALLBACK_KEY = "cb-" + secrets.token_hex(20)
INTERNAL_KEY = "in-" + secrets.token_hex(20)
EXECUTION_ID = "657118e1d511b6e54fe2a969"


@dataclass
class AclRedis:
    server: RedisServer
    passwords: dict[str, str]

    def url(self, role: str) -> str:
        return f"redis://{role}:{self.passwords[role]}@127.0.0.1:{self.server.port}/0"

    def client(self, role: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(role))


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    passwords = {role: secrets.token_hex(16) for role in ROLES}
    text = ACL_TEMPLATE.read_text()
    for role, password in passwords.items():
        text = text.replace(f"@{role.upper()}_PASSWORD@", password)
    acl = tmp_path / "users.acl"
    acl.write_text(text)
    with RedisServer(extra_args=["--aclfile", str(acl)]) as server:
        yield AclRedis(server, passwords)


def test_the_receiver_user_runs_its_intake_and_reads_and_nothing_else(
    acl_redis: AclRedis, serve_receiver: Callable[..., ServerThread]
) -> None:
    settings = load_settings(
        redis_url=acl_redis.url("receiver"),
        bridge_callback_keys=CALLBACK_KEY,
        bridge_internal_keys=INTERNAL_KEY,
    )
    server = serve_receiver(settings)
    callback = httpx.post(
        f"{server.url}/v1/kiban/executions/{EXECUTION_ID}/nip-events",
        json={"event": "SENT", "date": "2026-11-22T23:00:00Z", "linkId": None},
        headers={"x-api-key": CALLBACK_KEY},
        timeout=10,
    )
    assert callback.status_code == 200 and callback.json()["status"] == "accepted"
    internal = httpx.Client(base_url=server.internal_url, headers={"x-api-key": INTERNAL_KEY}, timeout=10)
    assert internal.get("/readyz").status_code == 200
    metrics = internal.get("/metrics")
    assert metrics.status_code == 200
    depths = [line for line in metrics.text.splitlines() if line.startswith("receiver_queue_depth{")]
    assert len(depths) == 2 and not [line for line in depths if line.endswith("NaN")]  # both queues read
    nip = internal.post(f"/v1/applications/{EXECUTION_ID}/nip", json={"nip": "123456"})
    assert nip.status_code == 202
    command = internal.get(f"/v1/commands/{nip.json()['command_id']}")  # reads the job's fields
    assert command.status_code == 200 and command.json()["execution_id"] == EXECUTION_ID, command.text
    assert internal.get(f"/v1/applications/{EXECUTION_ID}/timeline").status_code == 404  # read allowed
    internal.close()

    client = acl_redis.client("receiver")
    for command in (
        ("CONFIG", "GET", "maxmemory"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("SCAN", "0"),
        ("HSET", keys.execution(EXECUTION_ID), "status", "x"),  # execution state: the workers'
        ("SADD", keys.OPEN_EXECUTIONS, EXECUTION_ID),
        ("RPUSH", keys.timeline(EXECUTION_ID), "forged"),  # timelines are read-only to it
        ("XADD", "workfloo:events", "*", "type", "forged"),
        ("DEL", f"rq:job:{callback.json()['event_id']}"),
        ("HSET", "rq:worker:x", "state", "busy"),  # RQ's execution state
        ("PUBLISH", "workfloo:events:nip.sent", "forged"),
        ("RPUSH", "rq:queue:workfloo-webhooks", "forged"),  # the webhook queue: its length only
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    client.close()
    assert acl_redis.client("worker").hget(f"rq:job:{callback.json()['event_id']}", "status") == b"queued"


def test_no_role_can_reconfigure_or_wipe_redis(acl_redis: AclRedis) -> None:
    for role in ROLES:
        client = acl_redis.client(role)
        for command in (("CONFIG", "SET", "appendonly", "no"), ("FLUSHALL",), ("KEYS", "*"), ("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("somebody-elses:key", "x")  # only the bridge's key prefixes
        client.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis.server.port).ping()  # the default user is off


def test_an_application_runs_end_to_end_with_one_acl_user_per_role(acl_redis: AclRedis) -> None:
    from workers.sandbox.demo.model import AppRun
    from workers.sandbox.demo.scenario import ScenarioRunner, judge

    config = StackConfig(
        redis_url=acl_redis.url("operator"),
        workers=1,
        keys=StackKeys(callback=CALLBACK_KEY, internal=INTERNAL_KEY, kiban="kb-" + secrets.token_hex(8)),
        role_env={role: {"REDIS_URL": acl_redis.url(role)} for role in ("receiver", "worker", "scheduler")},
        extra_env={"BRIDGE_RECONCILE_INTERVAL_SECONDS": "1"},
    )
    stack = Stack(config)
    try:
        stack.start()
        run = AppRun(index=1, scenario="approved")
        runner = ScenarioRunner(stack, [run], timeout=45)
        try:
            runner.run()
        finally:
            runner.close()
        operator = acl_redis.client("operator")

        def reconcile_enqueued() -> bool:  # by the scheduler, under its own user
            return any(
                b"reconcile" in (operator.hget(key, "description") or b"")
                for key in operator.scan_iter("rq:job:*", count=1000)
            )

        wait_until(reconcile_enqueued, timeout=20, what="the scheduler's reconcile job")
        operator.close()
        outcome, problems = judge(run)
        denied = [line for _role, line in stack.log_lines() if "NOPERM" in line or "NoPermission" in line]
        assert not denied, "\n".join(denied[:3])
        assert outcome == "approved" and not problems, (run.error, problems, run.event_types())
    finally:
        stack.stop()
        stack.cleanup_logs()


def _csrf(page: httpx.Response) -> str:
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:200]
    return found.group(1)


@pytest.mark.parametrize("console_user", [None, "operator"])
def test_the_console_in_a_receiver_process_works_with_the_operator_user(
    acl_redis: AclRedis, serve_receiver: Callable[..., ServerThread], console_user: str | None
) -> None:
    """The receiver's own user may not read the console's keys, change a subscriber nor publish;
    BRIDGE_CONSOLE_REDIS_URL gives the console the operator user for that."""
    import base64

    from workers.core.settings import HttpSubscriber
    from workers.ops.console import console_routes

    secret = "whsec_" + base64.b64encode(b"acl-test-secret-of-32-bytes-long").decode()
    subscriber = HttpSubscriber(url="https://hooks.example.com/h", secret=secret, id="sink")
    settings = load_settings(
        redis_url=acl_redis.url("receiver"),
        bridge_console_redis_url=acl_redis.url(console_user) if console_user else None,
        bridge_callback_keys=CALLBACK_KEY,
        bridge_internal_keys=INTERNAL_KEY,
    ).model_copy(update={"bridge_http_subscribers": [subscriber]})
    server = serve_receiver(settings, internal_routes=console_routes)
    with httpx.Client(base_url=server.internal_url, timeout=10) as client:
        login = client.get("/console/login")
        signed_in = client.post("/console/login", data={"csrf": _csrf(login), "key": INTERNAL_KEY})
        assert signed_in.status_code == 303
        page = client.get("/console/subscribers")
        if console_user is None:  # refused by Redis (NOPERM): the console needs the operator user
            assert page.status_code == 500
            return
        answer = client.post("/console/subscribers/sink/disable", data={"csrf": _csrf(page)})
    assert answer.status_code == 303
    with acl_redis.client("operator") as operator:
        assert operator.exists(keys.subscriber_disabled("sink"))
        [(_, fields)] = operator.xrange(settings.events_stream)
    assert fields[b"type"] == b"operator.action"
