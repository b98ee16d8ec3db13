"""REDIS_URL forms: parsing of every form, and real connections through redis://, unix:// and Sentinel."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from workers.core.errors import RedisUrlError, SettingsError
from workers.core.redis_client import (
    SentinelTarget,
    async_redis_from_url,
    parse_sentinel_url,
    redis_from_settings,
    redis_from_url,
)
from workers.core.settings import Settings, load_settings
from workers.sandbox.redis_server import find_redis_server, free_port
from workers.sandbox.wait import wait_until

# --- parsing --------------------------------------------------------------------------------------


def test_sentinel_url_with_several_sentinels_service_and_db() -> None:
    target = parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/bridge/3")
    assert target == SentinelTarget(
        sentinels=[("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)],
        service_name="bridge",
        db=3,
        password="s3cret",
    )


def test_sentinel_url_defaults_db_zero_and_no_credentials() -> None:
    target = parse_sentinel_url("redis+sentinel://sentinel:26379/mymaster")
    assert (target.db, target.username, target.password, target.tls) == (0, None, None, False)


def test_sentinel_url_user_password_are_percent_decoded() -> None:
    target = parse_sentinel_url("redis+sentinel://bridge:p%40ss%3Aword@h:1/svc")
    assert (target.username, target.password) == ("bridge", "p@ss:word")


def test_sentinel_url_ipv6_hosts() -> None:
    target = parse_sentinel_url("redis+sentinel://[::1]:26379,[fd00::2]/svc")
    assert target.sentinels == [("::1", 26379), ("fd00::2", 26379)]


def test_sentinel_url_query_options_are_typed_and_sentinel_credentials_split_off() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://h1,h2/svc?socket_timeout=2.5&ssl_ca_certs=/etc/ca.pem"
        "&sentinel_password=sp&sentinel_username=su&db=4&health_check_interval=10"
    )
    assert target.tls is True
    assert target.db == 4
    assert (target.sentinel_username, target.sentinel_password) == ("su", "sp")
    expected = {"socket_timeout": 2.5, "ssl_ca_certs": "/etc/ca.pem", "health_check_interval": 10}
    assert target.options == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "service name"),
        ("redis+sentinel://h:26379/", "service name"),
        ("redis+sentinel://h:26379/svc/zero", "must be a number"),
        ("redis+sentinel://h:26379/svc/0/extra", "/service_name[/db]"),
        ("redis+sentinel://h:notaport/svc", "invalid sentinel port"),
        ("redis+sentinel://h:70000/svc", "invalid sentinel port"),
        ("redis+sentinel://h1,,h2/svc", "empty sentinel address"),
        ("redis+sentinel://:26379/svc", "empty sentinel host"),
        ("redis+sentinel://h/svc?socket_timeout=soon", "socket_timeout"),
        ("rediss+sentinel://h/svc?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://h:6379/0", "not a redis+sentinel"),
    ],
)
def test_bad_sentinel_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=re.escape(message)):
        parse_sentinel_url(url)


def test_error_messages_never_contain_the_password() -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_sentinel_url("redis+sentinel://:hunter2@h:bad/svc")
    assert "hunter2" not in str(caught.value)


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(RedisUrlError, match="must start with"):
        redis_from_url("http://h:6379/0")


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379/0?ssl_ca_certs=/ca.pem", "unix:///run/redis.sock?ssl_certfile=/c.pem"],
)
def test_tls_options_on_a_plaintext_url_are_refused(url: str) -> None:
    with pytest.raises(RedisUrlError, match="need a TLS URL"):
        redis_from_url(url)


def test_tls_options_on_a_plaintext_sentinel_url_are_refused() -> None:
    with pytest.raises(RedisUrlError, match="need a TLS URL"):
        redis_from_url("redis+sentinel://h/svc?ssl_ca_certs=/ca.pem")


def _connection_kwargs(client: redis.Redis) -> dict[str, object]:
    return dict(client.connection_pool.connection_kwargs)


def test_rediss_takes_tls_files_from_settings() -> None:
    settings = Settings(
        redis_url="rediss://cache.internal:6380/2",
        redis_ssl_ca_certs="/etc/bridge/ca.pem",
        redis_ssl_certfile="/etc/bridge/client.pem",
        redis_ssl_keyfile="/etc/bridge/client.key",
    )
    client = redis_from_settings(settings)
    kwargs = _connection_kwargs(client)
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_ca_certs"] == "/etc/bridge/ca.pem"
    assert kwargs["ssl_certfile"] == "/etc/bridge/client.pem"
    assert kwargs["ssl_keyfile"] == "/etc/bridge/client.key"
    assert kwargs["ssl_cert_reqs"] == "required"
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 2)
    assert kwargs["socket_timeout"] == settings.redis_timeout_seconds


def test_url_query_beats_settings_for_tls_options() -> None:
    settings = Settings(redis_ssl_ca_certs="/from/settings.pem", redis_ssl_cert_reqs="required")
    client = redis_from_url(
        "rediss://h:6380/0?ssl_ca_certs=/from/url.pem&ssl_cert_reqs=none", settings=settings
    )
    kwargs = _connection_kwargs(client)
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/from/url.pem", "none")


def test_plain_url_ignores_tls_settings() -> None:
    settings = Settings(redis_ssl_ca_certs="/etc/ca.pem")
    client = redis_from_url("redis://h:6379/1", settings=settings)
    assert client.connection_pool.connection_class is redis.Connection
    assert "ssl_ca_certs" not in _connection_kwargs(client)


def test_async_rediss_uses_the_asyncio_ssl_connection() -> None:
    client = async_redis_from_url("rediss://h:6380/0", settings=Settings(redis_ssl_ca_certs="/ca.pem"))
    assert client.connection_pool.connection_class is redis.asyncio.SSLConnection
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_sentinel_tls_applies_to_master_and_sentinels_and_keeps_credentials_apart() -> None:
    settings = Settings(redis_ssl_ca_certs="/ca.pem", redis_sentinel_password="sentinel-pw")
    client = redis_from_url("rediss+sentinel://:master-pw@s1:26379,s2:26379/bridge/5", settings=settings)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    assert pool.service_name == "bridge"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (5, "master-pw")
    manager = pool.sentinel_manager
    assert [(c.connection_pool.connection_kwargs["host"]) for c in manager.sentinels] == ["s1", "s2"]
    sentinel_kwargs = manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs["password"] == "sentinel-pw"
    assert sentinel_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert manager.sentinels[0].connection_pool.connection_class is redis.SSLConnection


def test_async_sentinel_client_is_asyncio() -> None:
    client = async_redis_from_url("redis+sentinel://s1/bridge")
    assert isinstance(client.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert client.connection_pool.connection_class is redis.asyncio.sentinel.SentinelManagedConnection


def test_settings_accept_every_documented_scheme_and_refuse_others() -> None:
    for url in (
        "redis://h/0",
        "rediss://h/0",
        "unix:///s.sock",
        "redis+sentinel://h/m",
        "rediss+sentinel://h/m",
    ):
        assert load_settings(redis_url=url).redis_url == url
    with pytest.raises(SettingsError, match="REDIS_URL"):
        load_settings(redis_url="memcached://h")


def test_settings_refuse_an_unknown_cert_check() -> None:
    with pytest.raises(SettingsError, match="BRIDGE_REDIS_SSL_CERT_REQS"):
        load_settings(redis_ssl_cert_reqs="sometimes")


# --- real servers ---------------------------------------------------------------------------------


def test_plain_url_reaches_the_test_redis(redis_url: str) -> None:
    client = redis_from_url(redis_url)
    client.set("deploy:plain", "1")
    assert client.get("deploy:plain") == b"1"
    client.close()


def _wait(check: Callable[[], object]) -> None:
    wait_until(check, timeout=5.0, what="a redis process", ignore=(redis.RedisError, OSError))


def test_unix_socket_url() -> None:
    with tempfile.TemporaryDirectory(prefix="wfb-unix-") as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(
            [find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--save", "",
             "--appendonly", "no", "--dir", tmp, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(sock.exists)
            client = redis_from_url(f"unix://{sock}?db=2")
            _wait(client.ping)
            client.set("k", "v")
            assert client.get("k") == b"v"
            assert client.connection_pool.connection_kwargs["db"] == 2
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@dataclass
class SentinelSetup:
    master_port: int
    sentinel_port: int
    master_password: str = "master-pw"
    sentinel_password: str = "sentinel-pw"
    service: str = "bridge"

    @property
    def url(self) -> str:
        return (
            f"redis+sentinel://:{self.master_password}@127.0.0.1:{self.sentinel_port}/{self.service}/1"
            f"?sentinel_password={self.sentinel_password}"
        )


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelSetup]:
    """A password-protected master and one password-protected sentinel watching it.

    Both require a password, so a passing round trip proves the URL's master password and the
    sentinel password (query or setting) each reached the right process."""
    setup = SentinelSetup(master_port=free_port(), sentinel_port=free_port())
    binary = find_redis_server()
    with tempfile.TemporaryDirectory(prefix="wfb-sentinel-") as tmp:
        conf = Path(tmp) / "sentinel.conf"
        conf.write_text(
            f"port {setup.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\ndir {tmp}\n"
            f"logfile {tmp}/sentinel.log\nrequirepass {setup.sentinel_password}\n"
            f"sentinel monitor {setup.service} 127.0.0.1 {setup.master_port} 1\n"
            f"sentinel auth-pass {setup.service} {setup.master_password}\n"
            f"sentinel down-after-milliseconds {setup.service} 60000\n"
        )
        master_args = [
            binary, "--port", str(setup.master_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", tmp, "--requirepass", setup.master_password,
            "--logfile", f"{tmp}/master.log",
        ]  # fmt: skip
        procs = [
            subprocess.Popen(master_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ),
        ]
        try:
            master = redis.Redis(port=setup.master_port, password=setup.master_password)
            probe = redis.Redis(port=setup.sentinel_port, password=setup.sentinel_password)
            _wait(master.ping)
            _wait(lambda: probe.sentinel_get_master_addr_by_name(setup.service) is not None)
            master.close()
            probe.close()
            yield setup
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)


def test_sentinel_url_resolves_the_master_and_round_trips(sentinel: SentinelSetup) -> None:
    client = redis_from_url(sentinel.url, socket_timeout=2)
    client.set("deploy:sentinel", "via-sentinel")
    assert client.get("deploy:sentinel") == b"via-sentinel"
    assert client.connection_pool.get_master_address() == ("127.0.0.1", sentinel.master_port)
    client.close()
    # The write landed on the master, in the database named by the URL.
    direct = redis.Redis(port=sentinel.master_port, password=sentinel.master_password, db=1)
    assert direct.get("deploy:sentinel") == b"via-sentinel"
    direct.close()


def test_sentinel_password_from_settings(sentinel: SentinelSetup) -> None:
    url = (
        f"redis+sentinel://:{sentinel.master_password}@127.0.0.1:{sentinel.sentinel_port}/{sentinel.service}"
    )
    settings = Settings(redis_url=url, redis_sentinel_password=sentinel.sentinel_password)
    client = redis_from_settings(settings)
    assert client.ping() is True
    client.close()


async def test_async_sentinel_round_trip(sentinel: SentinelSetup) -> None:
    client = async_redis_from_url(sentinel.url, socket_timeout=2)
    await client.set("deploy:async", "ok")
    assert await client.get("deploy:async") == b"ok"
    await client.aclose()


def test_receiver_intake_through_sentinel(sentinel: SentinelSetup, serve_receiver: Any) -> None:
    """The receiver's own pool (raw pipelined intake) works behind a Sentinel URL, not just plain clients."""
    settings = Settings(
        redis_url=sentinel.url, bridge_callback_keys=["sn-e0f112c0e34e56810246035fe747384884e38130"]
    )  # type: ignore[arg-type]
    server = serve_receiver(settings)
    body = {"event": "SENT", "date": "2026-11-22T23:00:00Z", "linkId": "676b188a6ef8abaf775fef10"}
    response = httpx.post(
        f"{server.url}/v1/kiban/executions/657118e1d511b6e54fe2a969/nip-events",
        json=body,
        headers={"x-api-key": "sn-e0f112c0e34e56810246035fe747384884e38130"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    direct = redis.Redis(port=sentinel.master_port, password=sentinel.master_password, db=1)
    assert direct.exists(f"workfloo:dedupe:{event_id}") == 1
    assert direct.llen("rq:queue:workfloo") == 1
    direct.close()
