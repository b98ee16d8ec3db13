"""Build Redis clients from ``REDIS_URL``: plain, TLS, unix socket, or through Redis Sentinel.

Accepted forms::

    redis://[[user]:password@]host[:port][/db][?option=value…]
    rediss://…                       same, over TLS (ssl_ca_certs, ssl_certfile, … in the query)
    unix://[[user]:password@]/path/to/redis.sock[?db=0]
    redis+sentinel://[[user]:password@]host1[:26379],host2[:26379]/service_name[/db][?…]
    rediss+sentinel://…              same, TLS to the sentinels and to the master

For Sentinel the credentials in the URL are the *master's*; the sentinels' own credentials (if they
have ``requirepass``) go in the query as ``sentinel_username``/``sentinel_password`` or in the
``BRIDGE_REDIS_SENTINEL_PASSWORD`` setting. The client asks a sentinel for the current master on every new
connection, so after a failover it reconnects to the promoted replica by itself.

Options (timeouts, TLS files, …) come, in order of precedence, from the URL query, the keyword
arguments, then the ``REDIS_SSL_*`` settings (which apply only to ``rediss`` URLs). The URL wins
because it is what the operator wrote for this deployment; that is also redis-py's own rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.connection import URL_QUERY_ARGUMENT_PARSERS

from workers.core.errors import RedisUrlError
from workers.core.settings import Settings

DEFAULT_SENTINEL_PORT = 26379

TLS_OPTIONS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_password",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
_SENTINEL_ONLY = frozenset({"sentinel_username", "sentinel_password"})
_CERT_REQS = frozenset({"none", "optional", "required"})


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` / ``rediss+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(("redis+sentinel://", "rediss+sentinel://"))


def _parse_options(query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        parser = cast("Callable[[str], Any] | None", URL_QUERY_ARGUMENT_PARSERS.get(name))
        if parser is None:
            options[name] = value
            continue
        try:
            options[name] = parser(value)
        except (TypeError, ValueError):
            raise RedisUrlError(f"invalid value for {name!r} in the Redis URL") from None
    if "ssl_cert_reqs" in options and str(options["ssl_cert_reqs"]).lower() not in _CERT_REQS:
        raise RedisUrlError("ssl_cert_reqs must be none, optional or required")
    return options


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise RedisUrlError("empty sentinel address in the Redis URL")
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif item.count(":") == 1:
        host, port_text = item.split(":")
    else:
        host, port_text = item, ""
    if not host:
        raise RedisUrlError("empty sentinel host in the Redis URL")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError("invalid sentinel port in the Redis URL")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Split a Sentinel URL into sentinel addresses, service name, db, credentials and options."""
    if not is_sentinel_url(url):
        raise RedisUrlError("not a redis+sentinel:// or rediss+sentinel:// URL")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, has_colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_colon and secret else None
    sentinels = [_host_port(item, DEFAULT_SENTINEL_PORT) for item in hosts.split(",")]
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments:
        raise RedisUrlError("the Sentinel URL needs a service name: redis+sentinel://host:port/service_name")
    if len(segments) > 2:
        raise RedisUrlError("the Sentinel URL path must be /service_name[/db]")
    options = _parse_options(parts.query)
    db = options.pop("db", None)
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise RedisUrlError("the database in the Sentinel URL must be a number")
        db = int(segments[1]) if db is None else db  # ?db= wins, as in redis-py
    return SentinelTarget(
        sentinels=sentinels,
        service_name=segments[0],
        db=int(db or 0),
        tls=parts.scheme == "rediss+sentinel",
        username=username,
        password=password,
        sentinel_username=options.pop("sentinel_username", None),
        sentinel_password=options.pop("sentinel_password", None),
        options=options,
    )


def _tls_from_settings(settings: Settings | None) -> dict[str, Any]:
    if settings is None:
        return {}
    found: dict[str, Any] = {
        "ssl_cert_reqs": settings.redis_ssl_cert_reqs,
        "ssl_check_hostname": settings.redis_ssl_check_hostname,
    }
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, f"redis_{name}")
        if value:
            found[name] = value
    return found


def _reject_tls_options(options: dict[str, Any], scheme: str) -> None:
    misplaced = sorted(TLS_OPTIONS & options.keys())
    if misplaced:
        raise RedisUrlError(f"{', '.join(misplaced)} need a TLS URL (rediss://), not {scheme}://")


def _plain_kwargs(url: str, settings: Settings | None, kw: dict[str, Any]) -> dict[str, Any]:
    """Extra keyword arguments for ``from_url`` of a redis://, rediss:// or unix:// URL."""
    scheme = url.split("://", 1)[0]
    if scheme not in {"redis", "rediss", "unix"}:
        raise RedisUrlError(
            "REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
        )
    query = _parse_options(urlsplit(url).query)
    if scheme != "rediss":
        _reject_tls_options({**query, **kw}, scheme)
        return dict(kw)
    # from_url applies the URL query last, so it overrides both of these.
    return {**_tls_from_settings(settings), **kw}


def connection_kwargs(url: str, settings: Settings | None = None, **kw: Any) -> dict[str, Any]:
    """Keyword arguments (TLS options from settings included) for ``*.from_url(url)`` of a plain URL,
    for callers that build their own connection pool (the receiver's intake)."""
    return _plain_kwargs(url, settings, kw)


def _sentinel_parts(
    target: SentinelTarget, settings: Settings | None, kw: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(connection kwargs for the master, kwargs for the sentinel connections)."""
    connection: dict[str, Any] = {}
    if target.tls:
        connection.update(_tls_from_settings(settings))
    else:
        _reject_tls_options({**target.options, **kw}, "redis+sentinel")
    connection.update(kw)
    connection.update(target.options)
    connection["db"] = target.db
    if target.username is not None:
        connection["username"] = target.username
    if target.password is not None:
        connection["password"] = target.password
    if target.tls:
        connection["ssl"] = True
    sentinel_kwargs = {k: v for k, v in connection.items() if k.startswith(("socket_", "ssl"))}
    sentinel_password = target.sentinel_password
    if sentinel_password is None and settings is not None and settings.redis_sentinel_password is not None:
        sentinel_password = settings.redis_sentinel_password.get_secret_value() or None
    if target.sentinel_username is not None:
        sentinel_kwargs["username"] = target.sentinel_username
    if sentinel_password is not None:
        sentinel_kwargs["password"] = sentinel_password
    return connection, sentinel_kwargs


def redis_from_url(url: str, *, settings: Settings | None = None, **kw: Any) -> redis.Redis:
    """A synchronous client for any supported ``REDIS_URL`` form (RQ workers, CLI, scheduler)."""
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        connection, sentinel_kwargs = _sentinel_parts(target, settings, kw)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            target.sentinels, sentinel_kwargs=sentinel_kwargs, **connection
        )
        client: redis.Redis = sentinel.master_for(target.service_name)  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(url, **_plain_kwargs(url, settings, kw))


def async_redis_from_url(url: str, *, settings: Settings | None = None, **kw: Any) -> redis.asyncio.Redis:
    """An asyncio client for any supported ``REDIS_URL`` form (the receiver)."""
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        connection, sentinel_kwargs = _sentinel_parts(target, settings, kw)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            target.sentinels, sentinel_kwargs=sentinel_kwargs, **connection
        )
        client: redis.asyncio.Redis = sentinel.master_for(target.service_name)
        return client
    return redis.asyncio.Redis.from_url(url, **_plain_kwargs(url, settings, kw))


def _timeouts(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
    }


def redis_from_settings(settings: Settings, **kw: Any) -> redis.Redis:
    """``redis_from_url(settings.redis_url)`` with the configured timeouts and TLS options."""
    if settings.redis_url is None:
        raise RedisUrlError("REDIS_URL is not set")
    return redis_from_url(settings.redis_url, settings=settings, **{**_timeouts(settings), **kw})
