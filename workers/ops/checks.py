"""Readiness checks behind ``check``: each names what is wrong in plain words instead of raising.

Only harmless calls: Redis ``PING``/``INFO``, and reads of ids that cannot exist at Kiban and Kompliant,
whose "not found" answer proves the host answered and accepted the credentials.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from workers.core.crypto import KeyRing
from workers.core.errors import DataKeyError
from workers.core.redis_client import redis_from_url
from workers.core.settings import Settings, api_key_problems, env_name, redact_url
from workers.jobs import durability

DUMMY_KIBAN_ID = "000000000000000000000000"
DUMMY_KOMPLIANT_WORKFLOW = "w_workfloobridgecheck0000"


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_url(url: str | None) -> str:
    """A Redis URL with any password replaced (``workers.core.settings.redact_url``)."""
    return redact_url(url) if url else "(unset)"


def check_settings(settings: Settings) -> list[CheckResult]:
    """Settings that parse can still be unusable: name what is missing for a real deployment."""
    missing = []
    if settings.redis_url is None:
        missing.append("REDIS_URL")
    if not settings.bridge_callback_keys:
        missing.append("BRIDGE_CALLBACK_KEYS (Kiban's callbacks would all be refused)")
    if not settings.bridge_internal_keys:
        missing.append("BRIDGE_INTERNAL_KEYS (command and timeline endpoints would be closed)")
    if settings.kiban_api_key is None:
        missing.append("BRIDGE_KIBAN_API_KEY")
    if not settings.kiban_workfloo_definition_id:
        missing.append("BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID")
    for name in ("kompliant_api_key", "kompliant_secret_key", "kompliant_auth_token"):
        if getattr(settings, name) is None:
            missing.append(env_name(name))
    if not settings.kompliant_account_id:
        missing.append("BRIDGE_KOMPLIANT_ACCOUNT_ID")
    results = []
    if missing:
        results.append(CheckResult("settings", False, "missing: " + "; ".join(missing)))
    else:
        results.append(CheckResult("settings", True, "all required settings are present and valid"))
    if weak := api_key_problems(settings):  # the receiver would refuse to start
        results.append(CheckResult("api-keys", False, "; ".join(weak)))
    public = _host(settings.bridge_public_url)
    if _is_local(public) and not _is_local(_host(settings.kiban_base_url)):
        results.append(
            CheckResult(
                "public-url",
                False,
                f"BRIDGE_PUBLIC_URL points at {public}, which Kiban at {settings.kiban_base_url} cannot "
                "reach: callbacks would never arrive",
            )
        )
    return results


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _is_local(host: str) -> bool:
    """Loopback, private or link-local: reachable only from this machine or network."""
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def check_data_keys(settings: Settings) -> CheckResult:
    """The receiver and the workers refuse to start without a data key; say so before they do."""
    try:
        ring = KeyRing.from_settings(settings)
        probe = ring.seal(b"check", "check", "check")
        ring.open(probe, "check", "check")
    except DataKeyError as exc:
        return CheckResult("data-keys", False, str(exc))
    others = len(ring.kids) - 1
    also = f", {others} more to decrypt" if others else ""
    return CheckResult("data-keys", True, f"key {ring.primary!r} encrypts applicant data{also}")


def check_redis(settings: Settings) -> CheckResult:
    if settings.redis_url is None:
        return CheckResult("redis", False, "REDIS_URL is not set, so there is nowhere to store events")
    try:
        client = redis_from_url(
            settings.redis_url, settings=settings, socket_timeout=3, socket_connect_timeout=3
        )
    except ValueError as exc:  # RedisUrlError, and redis-py's own URL parsing errors
        return CheckResult("redis", False, f"REDIS_URL cannot be used: {_reason(exc)}")
    try:
        client.ping()
        info = client.info("server")
        version = str(info.get("redis_version", "?"))
    except redis.AuthenticationError:
        return CheckResult("redis", False, f"Redis at {safe_url(settings.redis_url)} refused the password")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return CheckResult(
            "redis", False, f"cannot reach Redis at {safe_url(settings.redis_url)} ({_reason(exc)})"
        )
    finally:
        client.close()
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major and major < 7:
        return CheckResult(
            "redis", False, f"Redis {version} is too old: consumer-group lag needs Redis 7 or newer"
        )
    return CheckResult("redis", True, f"reachable, Redis {version}")


def check_durability(settings: Settings) -> CheckResult:
    """What ``BRIDGE_DURABILITY`` waits for on this Redis (``auto`` resolved from ``INFO``), and whether
    an explicit level can be met at all."""
    if settings.redis_url is None:
        return CheckResult("durability", False, "REDIS_URL is not set")
    try:
        client = redis_from_url(
            settings.redis_url, settings=settings, socket_timeout=3, socket_connect_timeout=3
        )
        try:
            goal = durability.target(client, settings)
        finally:
            client.close()
    except (ValueError, redis.RedisError, OSError) as exc:
        return CheckResult("durability", False, f"cannot read Redis INFO ({type(exc).__name__})")
    if goal.problem:
        return CheckResult("durability", False, f"{goal.why}, but {goal.problem}: vendor calls would wait")
    return CheckResult("durability", True, goal.why)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def check_kiban(settings: Settings, timeout: float = 5.0) -> CheckResult:
    """GET the status of an id that cannot exist: 404 proves the host answers and accepted the key."""
    import httpx

    if settings.kiban_api_key is None:
        return CheckResult("kiban", False, "BRIDGE_KIBAN_API_KEY is not set, so Kiban cannot be called")
    url = f"{settings.kiban_base_url}/api/v1/workfloo/status/{DUMMY_KIBAN_ID}"
    params = {"sandbox": "true"} if settings.kiban_sandbox else {}
    try:
        response = httpx.get(
            url,
            params=params,
            headers={"x-api-key": settings.kiban_api_key.get_secret_value()},
            timeout=timeout,
        )
    except httpx.TimeoutException:
        return CheckResult(
            "kiban", False, f"Kiban at {settings.kiban_base_url} did not answer within {timeout}s"
        )
    except httpx.HTTPError as exc:
        return CheckResult(
            "kiban", False, f"cannot reach Kiban at {settings.kiban_base_url} ({_reason(exc)})"
        )
    code = response.status_code
    if code == 404:
        return CheckResult("kiban", True, f"reachable at {settings.kiban_base_url}, API key accepted")
    if code in (401, 403):
        return CheckResult(
            "kiban", False, f"Kiban at {settings.kiban_base_url} rejected BRIDGE_KIBAN_API_KEY (HTTP {code})"
        )
    if code >= 500:
        return CheckResult("kiban", False, f"Kiban at {settings.kiban_base_url} is failing (HTTP {code})")
    return CheckResult(
        "kiban",
        False,
        f"unexpected answer from Kiban at {settings.kiban_base_url} (HTTP {code}); "
        "is BRIDGE_KIBAN_BASE_URL right?",
    )


def check_kompliant(settings: Settings, timeout: float = 5.0) -> CheckResult:
    """workflow.get of an id that cannot exist: ENTITY_NOT_FOUND proves reachability and a valid signature."""
    import httpx

    from workers.core.errors import (
        KompliantAuthError,
        KompliantError,
        KompliantNotFoundError,
        KompliantRetryableError,
    )
    from workers.vendors.kompliant.client import KompliantClient

    base = settings.kompliant_base_url
    try:
        client = KompliantClient.from_settings(settings, timeout=httpx.Timeout(timeout))
    except ValueError as exc:
        return CheckResult("kompliant", False, f"Kompliant cannot be called: {_reason(exc)}")
    except Exception as exc:  # e.g. a secret that is not Base64
        return CheckResult("kompliant", False, f"Kompliant credentials are unusable: {_reason(exc)}")
    try:
        client.get_workflow(DUMMY_KOMPLIANT_WORKFLOW)
    except KompliantNotFoundError:
        return CheckResult("kompliant", True, f"reachable at {base}, signature and credentials accepted")
    except KompliantAuthError as exc:
        return CheckResult(
            "kompliant",
            False,
            f"Kompliant at {base} rejected the credentials (HTTP {exc.status_code}): check "
            "BRIDGE_KOMPLIANT_API_KEY, BRIDGE_KOMPLIANT_SECRET_KEY and BRIDGE_KOMPLIANT_AUTH_TOKEN",
        )
    except KompliantRetryableError as exc:
        if exc.status_code is None:
            return CheckResult("kompliant", False, f"cannot reach Kompliant at {base} ({_reason(exc)})")
        return CheckResult("kompliant", False, f"Kompliant at {base} is failing (HTTP {exc.status_code})")
    except KompliantError as exc:
        return CheckResult(
            "kompliant",
            False,
            f"unexpected answer from Kompliant at {base} (HTTP {exc.status_code}, {exc.code or 'no code'}); "
            "is BRIDGE_KOMPLIANT_BASE_URL right?",
        )
    finally:
        client.close()
    return CheckResult("kompliant", True, f"reachable at {base}, signature and credentials accepted")


def run_checks(settings: Settings) -> list[CheckResult]:
    return [
        *check_settings(settings),
        check_data_keys(settings),
        check_redis(settings),
        check_durability(settings),
        check_kiban(settings),
        check_kompliant(settings),
    ]
