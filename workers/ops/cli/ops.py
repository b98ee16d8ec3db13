"""Operator commands: ``demo``, ``status``, ``check`` and ``timeline``.

Exit codes, the same for every command: 0 all good, 1 a problem was found (an unreachable dependency,
a failed demo application, an unknown execution), 2 usage or configuration error. ``--json`` prints one
JSON document on stdout for scripts; human output goes to stdout too, diagnostics to stderr.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
import redis
from rich.console import Console
from rich.table import Table

from workers.core import keys
from workers.core.errors import SettingsError
from workers.core.settings import Settings, load_settings
from workers.ops.cli.helpers import settings_or_exit

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

DUMMY_KIBAN_ID = "000000000000000000000000"
DUMMY_KOMPLIANT_WORKFLOW = "w_workfloobridgecheck0000"


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"workfloo-bridge: {message}", err=True)
    raise SystemExit(code)


def _load(configure: bool = True) -> Settings:
    return settings_or_exit(configure_logs=configure)


def _redis_or_exit(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        _fail("REDIS_URL is not set (use `workfloo-bridge demo` for an embedded stack)", EXIT_USAGE)
    from workers.core.errors import RedisUrlError
    from workers.core.redis_client import redis_from_url

    timeout = max(settings.redis_timeout_seconds, 2.0)
    try:
        return redis_from_url(
            settings.redis_url, settings=settings, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    except (RedisUrlError, ValueError) as exc:
        _fail(f"invalid setting REDIS_URL: {exc}", EXIT_USAGE)


def _print_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# --- status -------------------------------------------------------------------------------------


def collect_status(client: redis.Redis, settings: Settings, recent: int = 10) -> dict[str, Any]:
    """Queue depths, started/failed jobs, workers, the event stream and per-consumer-group lag."""
    from rq import Queue, Worker
    from rq.registry import (
        DeferredJobRegistry,
        FailedJobRegistry,
        FinishedJobRegistry,
        ScheduledJobRegistry,
        StartedJobRegistry,
    )

    # The HTTP subscribers' delivery queue is their lag: deliveries waiting, retrying (scheduled), failed.
    queue_names = {
        settings.bridge_queue,
        settings.bridge_http_subscribers_queue,
        *(q.name for q in Queue.all(connection=client)),
    }
    queues = []
    for name in sorted(queue_names):
        queue = Queue(name, connection=client)
        queues.append(
            {
                "name": name,
                "queued": queue.count,
                "started": StartedJobRegistry(queue=queue).count,
                "failed": FailedJobRegistry(queue=queue).count,
                "scheduled": ScheduledJobRegistry(queue=queue).count,  # type: ignore[no-untyped-call]
                "deferred": DeferredJobRegistry(queue=queue).count,
                "finished": FinishedJobRegistry(queue=queue).count,
            }
        )
    workers = [
        {"name": w.name, "state": _text(w.get_state()), "queues": w.queue_names()}
        for w in Worker.all(connection=client)
    ]
    stream = settings.events_stream
    events: list[dict[str, Any]] = []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(stream, count=recent)  # type: ignore[assignment]
    for entry_id, fields in entries:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        occurred = None
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            occurred = orjson.loads(decoded.get("event", "{}")).get("occurred_at")
        events.append(
            {
                "id": _text(entry_id),
                "type": decoded.get("type"),
                "execution_id": decoded.get("execution_id") or None,
                "occurred_at": occurred,
            }
        )
    groups: list[dict[str, Any]] = []
    try:
        for group in client.xinfo_groups(stream):
            groups.append(
                {
                    "name": _text(group.get("name")),
                    "consumers": group.get("consumers"),
                    "pending": group.get("pending"),
                    "lag": group.get("lag"),
                    "last_delivered_id": _text(group.get("last-delivered-id")),
                }
            )
    except redis.ResponseError:  # the stream does not exist yet
        pass
    return {
        "queues": queues,
        "workers": workers,
        "stream": {
            "key": stream,
            "length": client.xlen(stream),
            "dead_letter_length": client.xlen(keys.DEAD_LETTER_STREAM),
        },
        "consumer_groups": groups,
        "open_executions": client.zcard(keys.OPEN_EXECUTIONS),
        "recent_events": events,
    }


def _render_status(console: Console, status: dict[str, Any]) -> None:
    queues = Table(title="queues", title_justify="left")
    for column in ("queue", "queued", "started", "failed", "scheduled", "deferred", "finished"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in status["queues"]:
        queues.add_row(
            q["name"],
            *(
                str(q[c]) if c != "failed" or not q[c] else f"[red]{q[c]}[/red]"
                for c in ("queued", "started", "failed", "scheduled", "deferred", "finished")
            ),
        )
    console.print(queues)
    states: dict[str, int] = {}
    for worker in status["workers"]:
        states[worker["state"]] = states.get(worker["state"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    console.print(f"workers: {len(status['workers'])} ({summary})")
    stream = status["stream"]
    console.print(
        f"event stream {stream['key']}: {stream['length']} entries, "
        f"dead letters: {stream['dead_letter_length']}, open executions: {status['open_executions']}"
    )
    if status["consumer_groups"]:
        groups = Table(title="consumer groups", title_justify="left")
        for column in ("group", "consumers", "pending", "lag", "last delivered"):
            groups.add_column(column)
        for g in status["consumer_groups"]:
            groups.add_row(
                g["name"], str(g["consumers"]), str(g["pending"]), str(g["lag"]), g["last_delivered_id"]
            )
        console.print(groups)
    else:
        console.print("consumer groups: none")
    if status["recent_events"]:
        recent = Table(title="recent events (newest first)", title_justify="left")
        for column in ("stream id", "type", "execution", "occurred at"):
            recent.add_column(column)
        for e in status["recent_events"]:
            recent.add_row(
                e["id"], str(e["type"]), str(e["execution_id"] or "-"), str(e["occurred_at"] or "")
            )
        console.print(recent)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--recent", default=10, show_default=True, type=click.IntRange(0, 1000), help="Recent events.")
def status(as_json: bool, recent: int) -> None:
    """Queue depths, started/failed jobs, workers, recent events and consumer-group lag.

    Exit 0 when Redis answered, 1 when it could not be reached, 2 on a configuration error.
    """
    settings = _load()
    client = _redis_or_exit(settings)
    try:
        report = collect_status(client, settings, recent=recent)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        _fail(f"cannot reach Redis at {_safe_url(settings.redis_url)}: {exc}", EXIT_PROBLEM)
    finally:
        client.close()
    if as_json:
        _print_json(report)
    else:
        _render_status(_console(), report)


def _safe_url(url: str | None) -> str:
    """A Redis URL with any password replaced."""
    if not url:
        return "(unset)"
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# --- check --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        missing.append("KIBAN_API_KEY")
    if not settings.kiban_workfloo_definition_id:
        missing.append("KIBAN_WORKFLOO_DEFINITION_ID")
    for name in ("kompliant_api_key", "kompliant_secret_key", "kompliant_auth_token"):
        if getattr(settings, name) is None:
            missing.append(name.upper())
    if not settings.kompliant_account_id:
        missing.append("KOMPLIANT_ACCOUNT_ID")
    results = []
    if missing:
        results.append(CheckResult("settings", False, "missing: " + "; ".join(missing)))
    else:
        results.append(CheckResult("settings", True, "all required settings are present and valid"))
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
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


def _is_local(host: str) -> bool:
    """Loopback, private or link-local: reachable only from this machine or network."""
    import ipaddress

    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def check_redis(settings: Settings) -> CheckResult:
    if settings.redis_url is None:
        return CheckResult("redis", False, "REDIS_URL is not set, so there is nowhere to store events")
    from workers.core.errors import RedisUrlError
    from workers.core.redis_client import redis_from_url

    try:
        client = redis_from_url(
            settings.redis_url, settings=settings, socket_timeout=3, socket_connect_timeout=3
        )
    except (RedisUrlError, ValueError) as exc:
        return CheckResult("redis", False, f"REDIS_URL cannot be used: {_reason(exc)}")
    try:
        client.ping()
        info = client.info("server")
        version = str(info.get("redis_version", "?"))
    except redis.AuthenticationError:
        return CheckResult("redis", False, f"Redis at {_safe_url(settings.redis_url)} refused the password")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return CheckResult(
            "redis", False, f"cannot reach Redis at {_safe_url(settings.redis_url)} ({_reason(exc)})"
        )
    finally:
        client.close()
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major and major < 7:
        return CheckResult(
            "redis", False, f"Redis {version} is too old: consumer-group lag needs Redis 7 or newer"
        )
    return CheckResult("redis", True, f"reachable, Redis {version}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def check_kiban(settings: Settings, timeout: float = 5.0) -> CheckResult:
    """GET the status of an id that cannot exist: 404 proves the host answers and accepted the key."""
    import httpx

    if settings.kiban_api_key is None:
        return CheckResult("kiban", False, "KIBAN_API_KEY is not set, so Kiban cannot be called")
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
            "kiban", False, f"Kiban at {settings.kiban_base_url} rejected KIBAN_API_KEY (HTTP {code})"
        )
    if code >= 500:
        return CheckResult("kiban", False, f"Kiban at {settings.kiban_base_url} is failing (HTTP {code})")
    return CheckResult(
        "kiban",
        False,
        f"unexpected answer from Kiban at {settings.kiban_base_url} (HTTP {code}); is KIBAN_BASE_URL right?",
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
            "KOMPLIANT_API_KEY, KOMPLIANT_SECRET_KEY and KOMPLIANT_AUTH_TOKEN",
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
            "is KOMPLIANT_BASE_URL right?",
        )
    finally:
        client.close()
    return CheckResult("kompliant", True, f"reachable at {base}, signature and credentials accepted")


def run_checks(settings: Settings) -> list[CheckResult]:
    return [
        *check_settings(settings),
        check_redis(settings),
        check_kiban(settings),
        check_kompliant(settings),
    ]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check(as_json: bool) -> None:
    """Validate the settings and reach Redis, Kiban and Kompliant with harmless calls.

    Prints what is wrong in plain words. Exit 0 when everything works, 1 when a check failed, 2 when the
    settings cannot be read at all.
    """
    settings = _load()
    results = run_checks(settings)
    ok = all(r.ok for r in results)
    if as_json:
        _print_json({"ok": ok, "checks": [r.as_dict() for r in results]})
    else:
        console = _console()
        for r in results:
            mark = "[green]ok  [/green]" if r.ok else "[red]FAIL[/red]"
            console.print(f"{mark} {r.name:<10} {r.message}")
        console.print("all checks passed" if ok else "[red]some checks failed[/red]")
    if not ok:
        raise SystemExit(EXIT_PROBLEM)


# --- timeline -----------------------------------------------------------------------------------


@click.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON.")
def timeline(execution_id: str, as_json: bool) -> None:
    """Every event of one application, in order, with the time between steps.

    Exit 1 when the bridge has no event for EXECUTION_ID.
    """
    from workers.core.timeline import read_timeline
    from workers.ops.render import timeline_table

    settings = _load()
    client = _redis_or_exit(settings)
    try:
        result = read_timeline(client, execution_id)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        _fail(f"cannot reach Redis at {_safe_url(settings.redis_url)}: {exc}", EXIT_PROBLEM)
    finally:
        client.close()
    if as_json:
        _print_json(result)
    elif result["count"]:
        console = _console()
        console.print(timeline_table(execution_id, result["events"]))
        console.print(f"{result['count']} events over {result['duration_ms'] / 1000:.2f} s")
    if not result["count"]:
        if not as_json:
            click.echo(f"no events for execution {execution_id}", err=True)
        raise SystemExit(EXIT_PROBLEM)


# --- demo ---------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--applications",
    "-n",
    default=4,
    show_default=True,
    type=click.IntRange(0, 200),
    help="Applications to drive; cycles approved, rejected, nip-error, duplicate-storm.",
)
@click.option("--keep-running", is_flag=True, help="Leave the stack up afterwards until Ctrl-C.")
@click.option("--redis-url", default=None, help="Use this Redis instead of an embedded one.")
@click.option("--workers", "worker_count", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option(
    "--timeout", default=45.0, show_default=True, type=float, help="Seconds to wait for all applications."
)
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON at the end.")
def demo(
    applications: int,
    keep_running: bool,
    redis_url: str | None,
    worker_count: int,
    timeout: float,
    log_dir: Path | None,
    as_json: bool,
) -> None:
    """Run the whole bridge on an embedded stack and drive applications through the real flow.

    Needs no configuration. Exit 0 when every application reached its expected outcome, 1 otherwise,
    130 when interrupted before the end.
    """
    from workers.sandbox.demo.runner import run_demo

    if redis_url is not None:
        try:
            load_settings(redis_url=redis_url)
        except SettingsError as exc:
            _fail(str(exc).replace("REDIS_URL", "--redis-url"), EXIT_USAGE)
    code = run_demo(
        applications=applications,
        keep_running=keep_running,
        redis_url=redis_url,
        workers=worker_count,
        timeout=timeout,
        log_dir=log_dir,
        as_json=as_json,
    )
    raise SystemExit(code)


COMMANDS = (demo, status, check, timeline)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)


__all__ = ["CheckResult", "collect_status", "register", "run_checks"]
