"""The HTTP plumbing both vendor clients share: one client construction from settings, one client per
process and configuration (never shared across a fork), and the ``Retry-After`` parser."""

import os
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from workers.core.settings import Settings
from workers.vendors.http import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    ProcessLocal,
    SharedClients,
    parse_retry_after,
    pool_options,
    timeout_from_settings,
    vendor_http_client,
)
from workers.vendors.kiban.client import KibanClient
from workers.vendors.kompliant.client import KompliantClient

NOW = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)
SECRET = "c2VjcmV0LWtleS1mb3ItdGVzdHM="  # Base64, as KSig1 needs


def test_one_object_per_key_within_a_process() -> None:
    cache: ProcessLocal[object] = ProcessLocal()
    first = cache.get("a", object)
    assert cache.get("a", object) is first
    assert cache.get("b", object) is not first


def test_a_forked_child_builds_its_own() -> None:
    cache: ProcessLocal[object] = ProcessLocal()
    parent_item = cache.get("a", object)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not see the parent's object
        same = cache.get("a", object) is parent_item
        os.write(write, b"same" if same else b"new")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 8)
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert cache.get("a", object) is parent_item


def test_timeouts_and_pool_come_from_settings() -> None:
    settings = Settings(
        vendor_connect_timeout_seconds=1.5, vendor_read_timeout_seconds=7.0, vendor_max_connections=4
    )
    timeout = timeout_from_settings(settings)
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (1.5, 7.0, 7.0, 7.0)
    assert pool_options(settings) == {"timeout": timeout, "max_connections": 4}


def test_vendor_http_client_pools_and_never_follows_redirects() -> None:
    client = vendor_http_client("http://vendor.invalid", {"x-api-key": "k"}, max_connections=3)
    try:
        assert client.timeout == DEFAULT_TIMEOUT
        assert client.follow_redirects is False
        assert client.headers["x-api-key"] == "k"
        assert str(client.base_url) == "http://vendor.invalid"
        pool = client._transport.inner._pool  # type: ignore[attr-defined]  # inside TracedTransport
        assert (pool._max_connections, pool._max_keepalive_connections) == (3, 3)
    finally:
        client.close()


def test_both_vendor_clients_are_built_the_same_way() -> None:
    settings = Settings(
        kiban_api_key="k",
        kompliant_api_key="a",
        kompliant_secret_key=SECRET,
        kompliant_auth_token="t",
        vendor_connect_timeout_seconds=2.0,
        vendor_read_timeout_seconds=5.0,
        vendor_max_connections=6,
    )
    kiban = KibanClient.from_settings(settings)
    kompliant = KompliantClient.from_settings(settings)
    try:
        for http in (kiban._http, kompliant._http):
            assert http.timeout == timeout_from_settings(settings)
            assert http.follow_redirects is False
            pool = http._transport.inner._pool  # type: ignore[attr-defined]
            assert pool._max_connections == 6
    finally:
        kiban.close()
        kompliant.close()


def test_shared_clients_rebuild_when_vendor_or_http_settings_change() -> None:
    built: list[Settings] = []

    def build(settings: Settings) -> object:
        built.append(settings)
        return object()

    clients: SharedClients[object] = SharedClients(build, lambda s: (s.kiban_base_url,))
    base = Settings()
    first = clients.get(base)
    assert clients.get(Settings()) is first
    assert clients.get(Settings(kiban_base_url="https://other.invalid")) is not first
    assert clients.get(Settings(vendor_read_timeout_seconds=1.0)) is not first
    assert clients.get(Settings(vendor_max_connections=2)) is not first
    assert len(built) == 4


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), (" 3 ", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0)],
)
def test_retry_after_in_seconds(header: str, expected: float) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_as_http_date() -> None:
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=NOW) == 90.0


def test_retry_after_date_in_the_past_means_now() -> None:
    header = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    assert parse_retry_after(header, now=NOW) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "nan", "Mon, 99 Foo 2026"])
def test_retry_after_unreadable_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_a_client_built_without_settings_gets_the_settings_defaults() -> None:
    assert timeout_from_settings(Settings()) == DEFAULT_TIMEOUT
    assert pool_options(Settings())["max_connections"] == DEFAULT_MAX_CONNECTIONS
