"""Settings for every process, read from environment variables and validated at start-up.

Every environment variable is ``BRIDGE_`` + the field name in capitals (``retry_base_seconds`` ←
``BRIDGE_RETRY_BASE_SECONDS``), so the bridge's settings never collide with another program's in a shared
ConfigMap; ``REDIS_URL`` keeps its name, which every Redis tool reads. A variable under its earlier,
unprefixed name is refused with the new name (``renamed_variables``).
Secrets are ``SecretStr``: they never appear in ``repr``, logs or validation errors. ``REDIS_URL`` stays a
plain string (every Redis client reads it) but its passwords are secrets all the same: ``repr``/``str``
show it through ``redact_url`` and ``Settings.secret_values`` hands them to the log redactor.
Anything the vendor docs leave open (see ``docs/vendor-assumptions.md``) is a setting whose default is the
labelled assumption, so it can be changed without a release.

Each concern is a section class with its own validators; ``Settings`` inherits them all, so every
field stays a flat attribute and ``docs/configuration.md`` is generated section by section.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workers.core.crypto import parse_entry
from workers.core.errors import SettingsError
from workers.core.events import matches

KIBAN_SANDBOX_URL = "https://sandbox.workfloo.kiban.com"
KOMPLIANT_URL = "https://api.kompliant.com"

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")

_URL_SECRET_PARAMS = frozenset({"password", "sentinel_password"})
"""Query parameters of a Redis URL that carry a password (redis-py and ``workers.core.redis_client``)."""

SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's key prefix, not a secret

DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Standard Webhooks: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_schedule(value: list[float]) -> list[float]:
    if not value or any(v < 0 for v in value):
        raise ValueError("must be a non-empty list of seconds >= 0")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_commas)]
RetrySchedule = Annotated[
    list[float], NoDecode, BeforeValidator(_split_commas), AfterValidator(_check_schedule)
]


class HttpSubscriber(BaseModel):
    """One endpoint that receives matching events as signed POSTs (Standard Webhooks).

    Delivery, signing and the SSRF guard live in ``workers.fanout.webhooks``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str
    types: list[str] = Field(default_factory=lambda: ["*"], description="Event type patterns, e.g. nip.*")
    secret: SecretStr = Field(description="whsec_ + base64 key, as Standard Webhooks defines it.")
    id: str = Field(default="", description="Stable name; defaults to a hash of the URL.")
    allow_private: bool = Field(default=False, description="Allow private/loopback/link-local addresses.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials")
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(SECRET_PREFIX):
            raise ValueError(f"must start with {SECRET_PREFIX}")
        try:
            key = base64.b64decode(raw[len(SECRET_PREFIX) :] + "==", validate=False)
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by base64") from None
        if len(key) < 16:
            raise ValueError("key must be at least 16 bytes (24 recommended)")
        return value

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if value and not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("may only hold letters, digits, - and _")
        return value

    @property
    def key(self) -> str:
        """The subscriber's stable identifier (its ``id`` or a hash of its URL)."""
        return self.id or hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def wants(self, event_type: str) -> bool:
        return matches(self.types, event_type)


ENV_PREFIX = "BRIDGE_"
UNPREFIXED = frozenset({"redis_url"})
"""Fields whose variable keeps its plain name: ``REDIS_URL`` is what every Redis tool reads."""


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    upper = field.upper()
    return upper if field in UNPREFIXED or upper.startswith(ENV_PREFIX) else ENV_PREFIX + upper


class _Section(BaseSettings):
    """Shared reading rules: ``env_name`` variables in any case, unknown variables ignored, inputs never
    echoed; code and tests may still pass a field by its name."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        hide_input_in_errors=True,
        validate_default=True,
        alias_generator=AliasGenerator(validation_alias=env_name),
        validate_by_name=True,
        validate_by_alias=True,
    )


def _url_parts(url: str) -> tuple[str, str | None, str, list[tuple[str, str | None]]]:
    """``scheme://`` + user-info (None when absent) + the rest up to the query, and the query's pairs."""
    scheme, sep, rest = url.partition("://")
    head, qmark, query = rest.partition("?")
    userinfo, at, hosts = head.rpartition("@")  # hosts and paths hold no "@"; a password might
    pairs: list[tuple[str, str | None]] = []
    for item in query.split("&") if qmark else []:
        key, eq, value = item.partition("=")
        pairs.append((key, value if eq else None))
    return scheme + sep, userinfo if at else None, hosts, pairs


def redact_url(url: str) -> str:
    """``url`` with every password in it (``user:password@``, ``?password=``, ``?sentinel_password=``)
    replaced by ``***``; scheme, user name, hosts, path and other parameters kept."""
    prefix, userinfo, hosts, pairs = _url_parts(url)
    if userinfo is not None:
        user, colon, _password = userinfo.partition(":")
        hosts = f"{user}:***@{hosts}" if colon else f"{userinfo}@{hosts}"
    if pairs:
        hosts += "?" + "&".join(
            key if value is None else f"{key}={'***' if key.lower() in _URL_SECRET_PARAMS else value}"
            for key, value in pairs
        )
    return prefix + hosts


def url_passwords(url: str | None) -> list[str]:
    """The passwords in a Redis URL, as written and percent-decoded (for the log redactor)."""
    if not url:
        return []
    _prefix, userinfo, _hosts, pairs = _url_parts(url)
    found = [userinfo.partition(":")[2]] if userinfo is not None else []
    found += [value for key, value in pairs if value and key.lower() in _URL_SECRET_PARAMS]
    return [form for raw in found if raw for form in {raw, unquote(raw)}]


class RedisSettings(_Section):
    """Where Redis is and how to reach it: URL, socket timeout, TLS and Sentinel credentials."""

    model_config = SettingsConfigDict(title="Redis")

    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss:// (TLS), unix:// or redis+sentinel://host:port/service_name/db. "
        "Unset: `demo` starts an embedded redis-server. Its passwords are secrets: shown as `***`, "
        "never logged.",
    )
    bridge_console_redis_url: str | None = Field(
        default=None,
        description="Redis URL of the operator console in the receiver process (replays, subscriber "
        "changes and its audit events write where the receiver's own Redis user may not): give it the "
        "operator user's URL. Unset: REDIS_URL. Its password is a secret, never logged.",
    )
    redis_timeout_seconds: float = Field(default=1.0, gt=0, description="Socket timeout for Redis calls.")
    redis_ssl_ca_certs: str | None = Field(
        default=None, description="PEM bundle of CAs that sign the Redis server certificate (rediss only)."
    )
    redis_ssl_certfile: str | None = Field(default=None, description="Client certificate for mutual TLS.")
    redis_ssl_keyfile: str | None = Field(default=None, description="Client private key for mutual TLS.")
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        default="required", description="Server certificate check: required, optional or none."
    )
    redis_ssl_check_hostname: bool = Field(
        default=True, description="Match the Redis server certificate against the host name."
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, description="Password of the Sentinel processes themselves (their requirepass)."
    )
    bridge_durability: Literal["auto", "none", "aof", "replica", "replica+aof"] = Field(
        default="auto",
        description="What must hold before a vendor call whose anchor is in Redis: none; aof (the "
        "primary fsynced its AOF, WAITAOF, Redis 7.2+); replica (BRIDGE_DURABILITY_REPLICAS replicas "
        "received it, WAIT); replica+aof (both); auto (read from INFO at each wait: replica when a "
        "replica is connected, aof when AOF is on and Redis has WAITAOF). Table per topology in "
        "docs/operations.md.",
    )
    bridge_durability_replicas: int = Field(
        default=1,
        ge=1,
        description="Replicas that must acknowledge an anchor at the replica levels (auto: at most the "
        "connected ones).",
    )
    bridge_durability_timeout_ms: int = Field(
        default=500,
        gt=0,
        description="Longest wait for the durability level; past it the step retries (transient) "
        "without calling the vendor. Held to 80 % of BRIDGE_REDIS_TIMEOUT_SECONDS, which would cut it short.",
    )

    @field_validator("redis_url", "bridge_console_redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(_REDIS_SCHEMES):
            raise ValueError("must start with one of " + ", ".join(_REDIS_SCHEMES))
        return value

    @field_serializer("redis_url", "bridge_console_redis_url")
    def _dump_redis_url(self, value: str | None) -> str | None:
        """``model_dump``/``model_dump_json`` show ``REDIS_URL`` without its passwords, as ``SecretStr``."""
        return redact_url(value) if value else value

    def __repr_args__(self) -> Any:
        """``repr``/``str`` of every settings object: ``REDIS_URL`` through ``redact_url``."""
        for name, value in super().__repr_args__():
            secret = name in ("redis_url", "bridge_console_redis_url") and isinstance(value, str)
            yield name, redact_url(value) if secret else value


class ReceiverSettings(_Section):
    """The HTTP receiver: who may call it, request limits and timeouts, and how callbacks reach Redis."""

    model_config = SettingsConfigDict(title="Receiver")

    bridge_callback_keys: SecretList = Field(
        default_factory=list,
        description="Comma-separated keys Kiban must present; list old and new to rotate.",
    )
    bridge_callback_key_headers: CommaList = Field(
        default_factory=lambda: ["x-api-key", "xApiKeyCallback"],
        description="Headers that may carry a callback key (assumption K1/K2).",
    )
    bridge_internal_keys: SecretList = Field(
        default_factory=list,
        description="Comma-separated keys for internal command/timeline endpoints (header x-api-key).",
    )
    bridge_console_sso_header: str = Field(
        default="",
        description="Header an SSO proxy in front of the internal listener sets to the signed-in person's "
        "identity; when named, the operator console records it as who acted (audit event operator.action) "
        "instead of the internal key's id. Empty: no header is trusted.",
    )
    bridge_console_session_seconds: int = Field(
        default=8 * 3600,
        gt=0,
        description="How long an operator console sign-in lasts (the signed session cookie's lifetime).",
    )
    bridge_public_url: str = Field(
        default="http://127.0.0.1:8000", description="Base URL Kiban uses to reach this receiver."
    )
    bridge_allow_plain_http: bool = Field(
        default=False,
        description="Accept http:// (not https://) for BRIDGE_PUBLIC_URL, BRIDGE_KIBAN_BASE_URL and "
        "BRIDGE_KOMPLIANT_BASE_URL outside loopback; off, only loopback hosts may use plain HTTP.",
    )
    bridge_public_host: str = Field(
        default="127.0.0.1",
        description="Interface of the public listener (Kiban callbacks, /healthz): the one a proxy or "
        "Ingress exposes.",
    )
    bridge_public_port: int = Field(default=8000, ge=0, le=65535, description="Port of the public listener.")
    bridge_internal_host: str = Field(
        default="127.0.0.1",
        description="Interface of the internal listener (commands, timeline, /readyz, /metrics, "
        "/openapi.json): reachable by internal services and Prometheus only, never exposed.",
    )
    bridge_internal_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Port of the internal listener (differs from the public one).",
    )
    bridge_max_connections: int = Field(
        default=1000,
        gt=0,
        description="Most connections one receiver process keeps open at once, both listeners together; "
        "a connection beyond it is answered 503 and closed at once (each process of serve --workers has "
        "its own limit).",
    )
    bridge_request_deadline_seconds: float = Field(
        default=20.0,
        gt=0,
        description="Longest time from a request's first byte (or the connection's opening) to the last "
        "byte of its body, headers included; past it the receiver answers 408 (or, once an answer has "
        "started, just closes the connection).",
    )
    bridge_max_body_bytes: int = Field(default=64 * 1024, gt=0, description="Largest accepted body.")
    bridge_max_header_bytes: int = Field(
        default=32 * 1024,
        gt=0,
        description="Largest request line plus headers; more gets 431 and a closed connection.",
    )
    bridge_body_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest time to receive a whole callback body once the headers are in; past it the "
        "receiver answers 408 and closes the connection (slow-loris bodies).",
    )
    bridge_header_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest time from connection (or from the first byte of a keep-alive request) to the "
        "end of the request headers; past it the connection is answered 408 and closed (slow headers).",
    )
    bridge_dedupe_ttl_seconds: int = Field(
        default=72 * 3600,
        gt=0,
        description="How long a delivery id, or a command's idempotency key, is remembered. Publisher "
        "once-keys live BRIDGE_JOB_FAILURE_TTL_SECONDS + this.",
    )
    bridge_queue: str = Field(default="workfloo", description="RQ queue for callback and command jobs.")
    bridge_intake_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Longest wait for Redis to confirm a callback write; past it the receiver answers 503.",
    )
    bridge_retry_after_seconds: int = Field(
        default=5, ge=1, description="Retry-After (seconds) sent with 503 when Redis is unavailable."
    )
    bridge_intake_max_batch: int = Field(
        default=256, gt=0, description="Most callback writes sent to Redis in one pipelined round trip."
    )
    bridge_intake_max_in_flight: int = Field(
        default=4, gt=0, le=32, description="Most intake round trips to Redis in flight at once."
    )
    bridge_intake_group_commit: bool = Field(
        default=True,
        description="Share Redis round trips between concurrent callbacks (false: one call per request, "
        "kept for the benchmark comparison).",
    )
    bridge_intake_transport: Literal["stream", "redis-py"] = Field(
        default="stream",
        description="How the intake talks to Redis: stream (pipelined bytes on the connection's asyncio "
        "streams, fastest) or redis-py (redis-py's public send_packed_command/read_response).",
    )
    bridge_graceful_shutdown_seconds: int = Field(
        default=20,
        gt=0,
        description="On SIGTERM the receiver stops accepting and waits this long for in-flight requests.",
    )

    @field_validator("bridge_public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        return _check_http_url(value)


class KibanSettings(_Section):
    """Kiban workfloo: host, credentials, which workfloo to run, and how its NIP answers are read."""

    model_config = SettingsConfigDict(title="Kiban")

    kiban_base_url: str = Field(default=KIBAN_SANDBOX_URL, description="Kiban workfloo host.")
    kiban_api_key: SecretStr | None = Field(default=None, description="Kiban space API key (x-api-key).")
    kiban_sandbox: bool = Field(
        default=True, description="Send ?sandbox=true and require a scenarioId (ignored on the sandbox host)."
    )
    kiban_sandbox_host: str = Field(
        default="sandbox.workfloo.kiban.com",
        description="Host where sandbox mode is implicit; elsewhere kiban_sandbox adds ?sandbox=true.",
    )
    kiban_workfloo_definition_id: str = Field(default="", description="idWorkflooDefinition to execute.")
    kiban_scenario_id: str = Field(default="", description="Default sandbox scenarioId.")
    kiban_nip_sent_markers: CommaList = Field(
        default_factory=lambda: ["previously sent", "already sent", "NIP_ALREADY_SENT"],
        description="Case-insensitive texts that mark a 400 from nip/send as 'NIP previously sent'.",
    )
    kiban_nip_send_bare_400_is_sent: bool = Field(
        default=True,
        description="Treat a 400 with an empty body from nip/send (no phone sent) as 'NIP previously sent'.",
    )

    @field_validator("kiban_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return _check_http_url(value)


class KompliantSettings(_Section):
    """Kompliant: host, credentials, request signing and API version."""

    model_config = SettingsConfigDict(title="Kompliant")

    kompliant_base_url: str = Field(default=KOMPLIANT_URL, description="Kompliant API host.")
    kompliant_api_key: SecretStr | None = Field(default=None, description="Kompliant API key (sb_/lv_).")
    kompliant_secret_key: SecretStr | None = Field(default=None, description="Base64 secret for KSig1.")
    kompliant_auth_token: SecretStr | None = Field(default=None, description="X-API-Auth-Token.")
    kompliant_account_id: str = Field(default="", description="account_id for workflow.create.")
    kompliant_signed_elements: str = Field(
        default="API-Key",
        description="KSig1 data elements to sign, ';'-separated (assumption P1). Only API-Key is confirmed; "
        "extra elements: HTTP-Verb, Timestamp, Nonce, Content-MD5.",
    )
    kompliant_api_version: str = Field(
        default="2025-03-24", description="Kompliant API version sent in kompliant_api_version_header."
    )
    kompliant_api_version_header: str = Field(
        default="X-API-Version",
        description="Header carrying the API version (assumption P2); empty to send none. Never signed.",
    )

    @field_validator("kompliant_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return _check_http_url(value)


class VendorHttpSettings(_Section):
    """Timeouts and connection pool shared by the Kiban and Kompliant HTTP clients."""

    model_config = SettingsConfigDict(title="Vendor HTTP")

    vendor_connect_timeout_seconds: float = Field(
        default=3.0, gt=0, description="Connect timeout for Kiban and Kompliant calls."
    )
    vendor_read_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Read/write/pool timeout for Kiban and Kompliant calls."
    )
    vendor_max_connections: int = Field(
        default=20, gt=0, description="Connection pool size of each vendor httpx.Client."
    )


class WorkerSettings(_Section):
    """RQ workers and the jobs they run: liveness, retries, NIP, approval, hand-off and reconciliation."""

    model_config = SettingsConfigDict(title="Workers")

    worker_class: str = Field(
        default="workers.runtime.worker.BridgeSimpleWorker",
        description="RQ worker class: workers.runtime.worker.BridgeSimpleWorker (in-process, default) or "
        "workers.runtime.worker.BridgeWorker (fork per job). See docs/workers.md for the measurement.",
    )
    bridge_worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a worker process's Prometheus metrics (0: off). One port per process: "
        "several workers on one host or pod each need their own (worker --metrics-port).",
    )
    bridge_worker_metrics_address: str = Field(
        default="127.0.0.1",
        description="Interface a worker's metrics endpoint listens on (0.0.0.0 in containers, for "
        "Prometheus; worker --metrics-host).",
    )
    worker_ttl_seconds: int = Field(
        default=20, ge=16, description="RQ worker key TTL; an idle worker blocks at most TTL-15 s per poll."
    )
    worker_heartbeat_seconds: int = Field(
        default=3, ge=1, description="How often a busy worker refreshes its job's StartedJobRegistry entry."
    )
    worker_heartbeat_grace_seconds: int = Field(
        default=7, ge=1, description="A job whose heartbeat is this much overdue counts as abandoned."
    )
    worker_maintenance_seconds: int = Field(
        default=60, ge=1, description="How often RQ's own registry maintenance runs in a worker."
    )
    reaper_interval_seconds: float = Field(
        default=3.0, gt=0, description="How often a worker requeues jobs abandoned by a dead worker."
    )
    scheduler_stale_seconds: float = Field(
        default=10.0,
        gt=1,
        description="A scheduler lock holder silent this long is dead; a worker takes its lock over.",
    )
    reaper_max_requeues: int = Field(
        default=3, ge=0, description="Crash requeues of one job before it is dead-lettered (poison pill)."
    )
    job_timeout_seconds: int = Field(default=60, ge=1, description="RQ job timeout for worker jobs.")
    bridge_job_lease_ttl_seconds: int = Field(
        default=3600,
        ge=60,
        description="How long a job run's lease (fencing token and the ids it recorded) outlives the run's "
        "last check; a run paused longer than this is no longer fenced. Keep it well above "
        "BRIDGE_JOB_TIMEOUT_SECONDS: a paused in-process run meets its job timeout as soon as it resumes.",
    )
    job_result_ttl_seconds: int = Field(default=3600, ge=0, description="How long finished jobs are kept.")
    job_failure_ttl_seconds: int = Field(
        default=30 * 24 * 3600, ge=60, description="How long dead letters stay in the failed-job registry."
    )
    retry_base_seconds: float = Field(default=1.0, ge=0, description="Backoff base (full jitter).")
    retry_cap_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Largest backoff between attempts; also the longest a job waits after a vendor "
        "recovers (unless the vendor asked for a longer Retry-After).",
    )
    bridge_retry_budget_seconds: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="How long a job retries a retryable error, measured from its first failed attempt "
        "(kept in the job's meta: a requeue or replay does not restart it). Past it the job is "
        "dead-lettered (job.dead_lettered); an approved execution's hand-off is then re-run by the "
        "reconciler until it is done.",
    )
    retry_after_max_seconds: float = Field(
        default=900.0, ge=0, description="Largest vendor Retry-After honoured; longer values are clipped."
    )
    nip_max_resends: int = Field(default=1, ge=0, description="NIP resends after an ERROR delivery event.")
    nip_resend_delay_seconds: float = Field(
        default=30.0, ge=0, description="Delay before resending a NIP after an ERROR delivery event."
    )
    nip_invalid_destination_patterns: CommaList = Field(
        default_factory=lambda: [
            r"unknown",
            r"invalid",
            r"no longer exist",
            r"does not exist",
            r"not enabled",
        ],
        description="Regexes (case-insensitive, comma-separated) over a NIP errorMessage that mean the "
        "destination is invalid: no resend, final nip.failed.",
    )
    approval_rule: str = Field(
        default="ruleset_or_tree",
        description="How a SUCCESS execution is judged approved: ruleset_or_tree (ruleset exit if any, "
        "else every decisionTree result true), ruleset, tree, or status (SUCCESS alone approves).",
    )
    approval_exit_values: CommaList = Field(
        default_factory=lambda: ["approved", "approve", "aprobado", "accepted", "accept"],
        description="ruleset.exit values (case-insensitive) that mean approved; any other exit rejects.",
    )
    applicant_first_name_fields: CommaList = Field(
        default_factory=lambda: ["firstName", "first_name", "nombre", "name"],
        description="FORM field ids holding the applicant's first name (first match wins).",
    )
    applicant_last_name_fields: CommaList = Field(
        default_factory=lambda: ["lastName", "last_name", "lastName1", "last_name_1", "apellidoPaterno"],
        description="FORM field ids holding the applicant's last name (first match wins).",
    )
    applicant_email_fields: CommaList = Field(
        default_factory=lambda: ["email", "correo", "emailAddress", "mail"],
        description="FORM field ids holding the applicant's e-mail (sent to Kompliant, never in events).",
    )
    handoff_lock_ttl_seconds: float = Field(
        default=10.0, gt=0, description="Lock serialising concurrent Kompliant hand-offs of one execution."
    )
    reconcile_after_seconds: float = Field(
        default=600.0, gt=0, description="An execution with no terminal event this long is polled."
    )
    reconcile_interval_seconds: int = Field(
        default=60, ge=1, description="How often RQ's cron scheduler enqueues the reconciler sweep."
    )
    reconcile_poll_backoff_seconds: float = Field(
        default=60.0, gt=0, description="First wait after a non-terminal poll; doubles per poll."
    )
    reconcile_poll_backoff_cap_seconds: float = Field(
        default=3600.0, gt=0, description="Largest wait between polls of one execution."
    )
    reconcile_batch: int = Field(default=200, ge=1, description="Executions polled per sweep.")
    bridge_followup_retry_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Least time between two reconciler re-runs of one approved execution's hand-off whose "
        "job is gone or dead-lettered after its retry budget. Below BRIDGE_RECONCILE_INTERVAL_SECONDS it is "
        "re-run at every sweep: with the defaults the application starts within about a minute of the "
        "vendor's recovery.",
    )
    bridge_reconcile_not_found_polls: int = Field(
        default=3,
        ge=1,
        description="Kiban 404 answers in a row after which the reconciler stops polling an open "
        "execution (reconcile.execution_not_found); 1 drops it at the first 404.",
    )
    bridge_execution_retention_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        description="How long an execution's state hash and link mapping are kept after their last write "
        "(the terminal state is normally the last one); every write refreshes it.",
    )

    @field_validator("nip_invalid_destination_patterns")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("approval_rule")
    @classmethod
    def _check_approval_rule(cls, value: str) -> str:
        if value not in {"ruleset_or_tree", "ruleset", "tree", "status"}:
            raise ValueError("must be ruleset_or_tree, ruleset, tree or status")
        return value


class FanoutSettings(_Section):
    """The durable event stream, execution timelines, stream consumers and HTTP subscribers."""

    model_config = SettingsConfigDict(title="Fan-out")

    events_stream: str = Field(default="workfloo:events", description="Durable event stream key.")
    events_stream_maxlen: int = Field(
        default=1_000_000,
        gt=0,
        description="Stream length kept once every consumer group has acknowledged; entries a group has "
        "not acknowledged stay beyond it, up to BRIDGE_EVENTS_STREAM_HARD_MAXLEN. Also caps the dead-letter "
        "stream.",
    )
    bridge_events_stream_hard_maxlen: int = Field(
        default=2_000_000,
        gt=0,
        description="Hard stream length cap (memory ~ 410 B per entry): past it the oldest entries go even "
        "if a group has not acknowledged them, and the loss is logged (events.trimmed_unacked), counted and "
        "dead-lettered. The publisher's own XADD bound sits a tenth (at least 1000 entries) above it.",
    )
    bridge_events_retention_seconds: int = Field(
        default=3 * 24 * 3600,
        ge=60,
        description="Stream entries older than this are trimmed once every consumer group has acknowledged "
        "them.",
    )
    bridge_events_retention_interval_seconds: int = Field(
        default=60,
        ge=1,
        description="How often RQ's cron scheduler runs the stream and timeline retention job.",
    )
    events_timeline_ttl_seconds: int = Field(
        default=30 * 24 * 3600,
        gt=0,
        description="How long an execution's timeline is kept after its last event.",
    )
    events_claim_idle_ms: int = Field(
        default=60_000, gt=0, description="Consumer: claim entries pending longer than this (dead consumers)."
    )
    events_max_deliveries: int = Field(
        default=5,
        gt=0,
        description="Consumer: deliveries after which an entry goes to the dead-letter stream.",
    )
    events_block_ms: int = Field(default=5_000, gt=0, description="Consumer: XREADGROUP BLOCK time.")
    bridge_http_subscribers: list[HttpSubscriber] = Field(
        default_factory=list,
        description='JSON list: [{"url": "https://…", "types": ["nip.*"], "secret": "whsec_…"}] '
        '(optional "id", "allow_private").',
    )
    bridge_http_subscribers_allow_private: bool = Field(
        default=False,
        description="Allow every HTTP subscriber to reach private/loopback/link-local addresses.",
    )
    bridge_http_subscribers_queue: str = Field(
        default="workfloo-webhooks", description="RQ queue for HTTP subscriber deliveries."
    )
    bridge_http_subscribers_retry_schedule: RetrySchedule = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE),
        description="Comma-separated seconds before each delivery attempt (Standard Webhooks schedule); "
        "its length is the number of attempts.",
    )
    bridge_http_subscribers_jitter: float = Field(
        default=0.1, ge=0, le=1, description="Random ± fraction applied to each retry delay."
    )
    bridge_http_subscribers_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one delivery attempt."
    )
    bridge_http_subscribers_max_retry_after_seconds: float = Field(
        default=36_000.0, ge=0, description="Cap on the Retry-After a subscriber may ask for."
    )

    @model_validator(mode="after")
    def _check_stream_caps(self) -> FanoutSettings:
        if self.bridge_events_stream_hard_maxlen < self.events_stream_maxlen:
            raise ValueError("BRIDGE_EVENTS_STREAM_HARD_MAXLEN must be at least BRIDGE_EVENTS_STREAM_MAXLEN")
        return self

    @property
    def events_stream_bound(self) -> int:
        """The publisher's ``XADD MAXLEN ~`` bound: a tenth (at least 1000 entries) above the hard cap, so
        a burst between two retention runs is still trimmed, counted and reported by the retention job."""
        hard = self.bridge_events_stream_hard_maxlen
        return hard + max(1000, hard // 10)


class DataKeySettings(_Section):
    """The keys that encrypt applicant data kept in Redis (the start form, the NIP waiting for its job)."""

    model_config = SettingsConfigDict(title="Data encryption")

    bridge_data_keys: SecretList = Field(
        default_factory=list,
        description="Comma-separated kid:base64-32-byte AES-256-GCM keys; the first encrypts, all decrypt "
        "(rotate: add the new key second, then move it first). Required by the receiver and the workers; "
        "make one with `workfloo-bridge keygen`.",
    )

    @field_validator("bridge_data_keys")
    @classmethod
    def _check_data_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        kids = [parse_entry(item.get_secret_value())[0] for item in value]
        if len(set(kids)) != len(kids):
            raise ValueError("key ids must be unique")
        return value


class LoggingSettings(_Section):
    """Log level and format of every process."""

    model_config = SettingsConfigDict(title="Logging")

    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR.")
    log_format: str = Field(default="json", description="json (production) or console (people).")

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("log_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value not in {"json", "console"}:
            raise ValueError("must be json or console")
        return value


class TracingSettings(_Section):
    """OpenTelemetry traces: off unless an OTLP endpoint is configured."""

    model_config = SettingsConfigDict(title="Tracing")

    bridge_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces). Set, or the SDK's own "
        "OTEL_EXPORTER_OTLP_ENDPOINT set, turns tracing on; unset, no span is built or exported.",
    )
    bridge_trace_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of new traces kept (a job follows its parent's decision).",
    )


class Settings(
    RedisSettings,
    ReceiverSettings,
    KibanSettings,
    KompliantSettings,
    VendorHttpSettings,
    WorkerSettings,
    FanoutSettings,
    DataKeySettings,
    LoggingSettings,
    TracingSettings,
):
    """Every setting of every process; the sections are its bases, in the order the reference lists them."""

    model_config = SettingsConfigDict(title="Settings")

    @property
    def event_once_ttl_seconds(self) -> int:
        """TTL of the publisher's once-keys (``workfloo:once:<key>``): ``BRIDGE_JOB_FAILURE_TTL_SECONDS`` +
        ``BRIDGE_DEDUPE_TTL_SECONDS``.

        Anything that can publish an effect again must meet its once-key: a dead letter (receiver-written,
        worker-enqueued or webhook job alike) lives ``BRIDGE_JOB_FAILURE_TTL_SECONDS`` after its last failure,
        which follows the job's publishes by at most its retry window; the dedupe TTL on top covers that
        window, and a replay that meets a once-key renews it for another full TTL. Derived, so raising
        the failure TTL can never leave once-keys shorter than the dead letters they guard."""
        return self.job_failure_ttl_seconds + self.bridge_dedupe_ttl_seconds

    @model_validator(mode="after")
    def _https_outside_loopback(self) -> Settings:
        if not self.bridge_allow_plain_http:
            for name in ("bridge_public_url", "kiban_base_url", "kompliant_base_url"):
                parts = urlsplit(getattr(self, name))
                if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
                    raise ValueError(
                        f"{env_name(name)} must be https:// outside loopback (BRIDGE_ALLOW_PLAIN_HTTP=true "
                        "allows http://)"
                    )
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret in plain text, for the log redactor."""
        found: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = value if isinstance(value, list) else [value]
            found.extend(item.get_secret_value() for item in items if isinstance(item, SecretStr))
        found.extend(sub.secret.get_secret_value() for sub in self.bridge_http_subscribers)
        found.extend(url_passwords(self.redis_url))
        found.extend(url_passwords(self.bridge_console_redis_url))
        return [s for s in found if s]


def renamed_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(earlier name, name now)`` for each variable set under a name from before the ``BRIDGE_`` prefix."""
    upper = {key.upper() for key in environ}
    return [
        (field.upper(), env_name(field))
        for field in Settings.model_fields
        if env_name(field) != field.upper() and field.upper() in upper
    ]


MIN_API_KEY_LENGTH = 32
PLACEHOLDER_WORDS = (
    "changeme", "change-me", "change_me", "example", "secret", "test", "password", "placeholder",
    "dummy", "sample", "default", "xxxxxxxx", "12345678",
)  # fmt: skip
"""Words of the keys people paste from examples; a key containing one (any case) is refused. The runs
are eight long: a random hex key holds "1234" about once in 1,500."""


def api_key_problems(settings: Settings) -> list[str]:
    """Why the receiver's API keys (``BRIDGE_CALLBACK_KEYS``, ``BRIDGE_INTERNAL_KEYS``) are unsafe, one
    line each, naming the variable and the key's position, never the key: shorter than
    ``MIN_API_KEY_LENGTH``, a known placeholder, fewer than 8 distinct characters, or in both lists."""
    problems: list[str] = []
    lists = {
        "BRIDGE_CALLBACK_KEYS": [k.get_secret_value() for k in settings.bridge_callback_keys],
        "BRIDGE_INTERNAL_KEYS": [k.get_secret_value() for k in settings.bridge_internal_keys],
    }
    for variable, values in lists.items():
        for position, key in enumerate(values, start=1):
            where = f"{variable} key {position}"
            lowered = key.lower()
            if len(key) < MIN_API_KEY_LENGTH:
                problems.append(f"{where} is shorter than {MIN_API_KEY_LENGTH} characters")
            elif any(word in lowered for word in PLACEHOLDER_WORDS):
                problems.append(f"{where} looks like a placeholder")
            elif len(set(key)) < 8:
                problems.append(f"{where} has fewer than 8 distinct characters")
    if set(lists["BRIDGE_CALLBACK_KEYS"]) & set(lists["BRIDGE_INTERNAL_KEYS"]):
        problems.append("a key is in both BRIDGE_CALLBACK_KEYS and BRIDGE_INTERNAL_KEYS")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; on error raise ``SettingsError`` with one line per bad variable."""
    renamed = renamed_variables(os.environ)
    if renamed:
        raise SettingsError("; ".join(f"{old} is now called {new}: rename it" for old, new in renamed))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            if not error["loc"]:  # a rule across settings: its message names them
                lines.append("invalid settings: " + error["msg"].removeprefix("Value error, "))
                continue
            loc = str(error["loc"][0])
            variable = env_name(loc) if loc in Settings.model_fields else loc.upper()
            lines.append(f"invalid setting {variable}: {error['msg']}")
        raise SettingsError("; ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, loaded once (RQ job functions use this)."""
    return load_settings()
