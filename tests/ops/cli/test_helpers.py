"""Every command that talks to Redis fails the same way: exit 2 without a URL, 1 when Redis is gone."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.ops.cli import main
from workers.sandbox.redis_server import free_port

_REDIS_COMMANDS = (["status"], ["timeline", "x"], ["events", "tail"], ["dlq", "list"], ["dlq", "replay", "x"])


@pytest.mark.parametrize("args", _REDIS_COMMANDS, ids=" ".join)
def test_no_redis_url_is_a_usage_error(clean_env: pytest.MonkeyPatch, args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "REDIS_URL is not set" in result.stderr


@pytest.mark.parametrize("args", _REDIS_COMMANDS, ids=" ".join)
def test_unreachable_redis_is_one_line_and_exit_1(clean_env: pytest.MonkeyPatch, args: list[str]) -> None:
    port = free_port()
    clean_env.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in result.stderr
    assert "hunter2" not in result.stderr
