"""deploy/compose.yaml is a valid Compose file (compose-spec schema shipped in check-jsonschema) and
keeps the properties the operations doc promises. No Docker engine needed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import ROOT
from workers.core.settings import Settings, env_name

COMPOSE = ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
REDIS_PASSWORDS = [f"REDIS_{role}_PASSWORD" for role in ("RECEIVER", "WORKER", "SCHEDULER", "OPERATOR")]


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_matches_the_compose_spec() -> None:
    result = _check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period: 210s", "stop_grace_periods: 210s"))
    result = _check(broken)
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stdout + result.stderr


def test_redis_has_aof_everysec_noeviction_on_a_named_volume_and_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]
    assert redis["image"].startswith("redis:7")
    assert "redis-cli --user operator ping" in " ".join(redis["healthcheck"]["test"])
    # One ACL user per role, from deploy/redis/users.acl; no shared requirepass.
    assert command[command.index("--aclfile") + 1] == "/tmp/users.acl" and "--requirepass" not in command
    assert "./redis/users.acl:/etc/redis/users.acl.template:ro" in redis["volumes"]


def _bridge_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = compose["x-bridge"]["image"]
    return {name: s for name, s in compose["services"].items() if s.get("image") == image}


def test_proxy_spreads_over_both_receivers_and_waits_for_them(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    receivers = {name for name, s in _bridge_services(compose).items() if s["command"][0] == "serve"}
    assert {
        name for name, dep in proxy["depends_on"].items() if dep["condition"] == "service_healthy"
    } == receivers
    conf = (COMPOSE.parent / "nginx.conf").read_text()
    assert set(re.findall(r"server (receiver-\d+):8000", conf)) == receivers
    assert proxy["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    # Bodies the receiver must judge itself (413 as JSON) are not cut by nginx first.
    limit = re.search(r"client_max_body_size (\d+)m;", conf)
    assert limit and int(limit.group(1)) * 1024 * 1024 > Settings().bridge_max_body_bytes


def test_two_receivers_a_worker_pool_and_one_scheduler(compose: dict[str, Any]) -> None:
    services = compose["services"]
    receivers = [s for s in services.values() if s.get("command", [None])[0] == "serve"]
    assert len(receivers) == 2
    # Only the internal listener is published, and on loopback only.
    assert {r["ports"][0] for r in receivers} == {"127.0.0.1:8101:8001", "127.0.0.1:8102:8001"}
    assert services["worker"]["command"] == ["worker", "--metrics-port", "9102", "--metrics-host", "0.0.0.0"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["scheduler"]["command"] == ["scheduler"]
    assert services["scheduler"]["deploy"]["replicas"] == 1
    for name in ("worker", "scheduler"):
        assert services[name]["healthcheck"] == {"disable": True}  # the image's check is HTTP


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return int(match.group(1))


def test_stop_grace_periods_cover_the_drain_and_the_longest_job(
    compose: dict[str, Any], job_timeout_seconds: int
) -> None:
    services = compose["services"]
    graceful = Settings().bridge_graceful_shutdown_seconds
    for name in ("receiver-1", "receiver-2"):
        assert _seconds(services[name]["stop_grace_period"]) > graceful
    assert _seconds(services["worker"]["stop_grace_period"]) > job_timeout_seconds


def test_bridge_services_wait_for_redis_and_read_secrets_from_the_env_file(compose: dict[str, Any]) -> None:
    for service in _bridge_services(compose).values():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["env_file"] == [{"path": ".env", "required": True}]
        role = {"serve": "receiver"}.get(service["command"][0], service["command"][0])
        assert service["environment"]["REDIS_URL"].startswith(
            f"redis://{role}:${{REDIS_{role.upper()}_PASSWORD:?"
        )
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def _secret_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        if "SecretStr" in str(field.annotation):
            names.add(env_name(name))
    return names


def test_no_secret_value_is_written_in_compose(compose: dict[str, Any]) -> None:
    secret_names = _secret_names() | set(REDIS_PASSWORDS) | {"REDISCLI_AUTH", "REDIS_URL"}
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key in secret_names:
                assert "${" in str(value), f"{name}.{key} has a literal secret"
                assert not re.search(r"://:[^$]", str(value)), f"{name}.{key} has a literal password"
        command = service.get("command") or []
        if "--requirepass" in command:
            assert command[command.index("--requirepass") + 1].startswith("${")


def test_env_example_covers_every_secret_with_placeholders_and_env_is_ignored() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    needed = _secret_names() - {"BRIDGE_REDIS_SENTINEL_PASSWORD"}  # compose runs a single Redis, no Sentinel
    assert needed <= example.keys(), needed - example.keys()
    assert set(REDIS_PASSWORDS) <= example.keys()
    for name in needed | set(REDIS_PASSWORDS):
        assert example[name].startswith("change-me"), f"{name} must be a placeholder in .env.example"
    variables = {env_name(field) for field in Settings.model_fields}
    unknown = {k for k in example if k not in variables} - set(REDIS_PASSWORDS)
    assert not unknown, f".env.example names settings that do not exist: {unknown}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT, check=False, timeout=10
    ).returncode
    assert ignored == 0, "deploy/.env must be gitignored"
