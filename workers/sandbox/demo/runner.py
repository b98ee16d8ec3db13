"""``workfloo-bridge demo``: start the embedded stack, drive the applications, report, stop cleanly."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
from rich.console import Console

from workers.core.settings import redact_url
from workers.sandbox.demo.display import LiveProgress, print_report, progress_table
from workers.sandbox.demo.model import AppRun, Summary, scenarios_for
from workers.sandbox.demo.scenario import ScenarioRunner
from workers.sandbox.stack import Stack, StackConfig
from workers.sandbox.supervisor import Terminated, signals_as_exceptions, signals_ignored

EXIT_INTERRUPTED = 130
READY_LINE = "demo stack is running"


def _keep_running_text(stack: Stack) -> str:
    env = stack.env()
    pids = " ".join(str(pid) for pid in stack.pids().values())
    exports = " ".join(
        f"{name}={env[name]}"
        for name in ("REDIS_URL", "BRIDGE_INTERNAL_KEYS", "BRIDGE_CALLBACK_KEYS", "BRIDGE_PUBLIC_URL",
                     "BRIDGE_KIBAN_BASE_URL", "BRIDGE_KIBAN_API_KEY", "BRIDGE_KIBAN_WORKFLOO_DEFINITION_ID",
                     "BRIDGE_KOMPLIANT_BASE_URL", "BRIDGE_KOMPLIANT_API_KEY", "BRIDGE_KOMPLIANT_SECRET_KEY",
                     "BRIDGE_KOMPLIANT_AUTH_TOKEN", "BRIDGE_KOMPLIANT_ACCOUNT_ID")
    )  # fmt: skip
    start_body = json.dumps(
        {
            "scenarioId": "approved",
            "form": {"email": "ana@example.com", "first_name": "Ana", "last_name_1": "Lopez"},
        }
    )
    return "\n".join(
        [
            f"{READY_LINE} (demo keys below are generated for this run only); Ctrl-C stops everything.",
            f"  receiver        {stack.receiver_url}  (public: Kiban's callbacks, GET /healthz)",
            f"  internal        {stack.internal_url}  (commands, timeline, GET /readyz, /metrics)",
            *(
                f"  worker metrics  {url}  ({name}, Prometheus)"
                for name, url in stack.worker_metrics_urls.items()
            ),
            f"  fake Kiban      {stack.kiban_url}",
            f"  fake Kompliant  {stack.kompliant_url}",
            f"  Redis           {redact_url(stack.redis_url)}",
            f"  internal key    {stack.keys.internal}   (x-api-key for /v1/applications…)",
            f"  callback key    {stack.keys.callback}   (x-api-key for /v1/kiban/…)",
            f"  process logs    {stack.log_dir}",
            f"  pids            {pids}",
            "watch it in another terminal:",
            f"  export {exports}",
            "  workfloo-bridge check",
            "  workfloo-bridge events tail --follow",
            "  workfloo-bridge status",
            "  workfloo-bridge timeline <execution id>",
            "start another application (scenarioId: approved, rejected, nip-error, nip-invalid, abandoned):",
            f"  curl -H 'x-api-key: {stack.keys.internal}' -H 'content-type: application/json' "
            f"-d '{start_body}' {stack.internal_url}/v1/applications",
            f"  curl -H 'x-api-key: {stack.keys.internal}' {stack.internal_url}/v1/applications/<id>/nip "
            """-H 'content-type: application/json' -d '{"nip": "123456"}'""",
            f"  curl -H 'x-api-key: {stack.keys.internal}' "
            f"{stack.internal_url}/v1/applications/<id>/timeline",
        ]
    )


def _wait_until_interrupted(stack: Stack) -> None:
    while True:
        dead = stack.dead_children()
        if dead:
            names = ", ".join(f"{c.name} (exit {c.process.returncode})" for c in dead)
            raise RuntimeError(f"stopped because a process exited: {names}; see {stack.log_dir}")
        time.sleep(0.5)


def run_demo(
    *,
    applications: int = 4,
    keep_running: bool = False,
    redis_url: str | None = None,
    workers: int = 2,
    timeout: float = 45.0,
    log_dir: Path | None = None,
    as_json: bool = False,
    console: Console | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Returns the process exit code: 0 all as expected, 1 not, 130 interrupted before the end."""
    console = console or Console(stderr=as_json, highlight=False)
    began = time.monotonic()
    config = StackConfig(
        workers=workers, redis_url=redis_url, log_dir=log_dir, extra_env=dict(extra_env or {})
    )
    stack = Stack(config)
    console.print(f"process logs: {stack.log_dir}")
    code = EXIT_INTERRUPTED
    finished = False
    runs = [AppRun(index=i + 1, scenario=s) for i, s in enumerate(scenarios_for(applications))]
    summary = Summary(runs=runs, log_dir=str(stack.log_dir))
    with signals_as_exceptions():
        try:
            with console.status("starting the stack") as spinner:
                stack.start(on_step=lambda message: spinner.update(message))
            console.print(
                f"stack ready in {time.monotonic() - began:.1f} s: receiver {stack.receiver_url}, "
                f"{workers} workers, Redis {redact_url(stack.redis_url)}"
            )
            if stack.worker_metrics_urls:
                console.print(
                    f"metrics: receiver {stack.internal_url}/metrics, workers "
                    + " ".join(stack.worker_metrics_urls.values()),
                    soft_wrap=True,
                )
            if runs:
                runner = ScenarioRunner(stack, runs, timeout=timeout)
                try:
                    for run in runs:
                        run.started_at = time.monotonic()
                    with LiveProgress(console, runs) as live:
                        runner.run(on_tick=live.refresh)
                    console.print()
                    summary.events_published, summary.duplicates_absorbed = runner.totals()
                finally:
                    runner.close()
            summary.wall_seconds = time.monotonic() - began
            if runs:
                print_report(console, summary)
            if as_json:
                sys.stdout.write(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
                sys.stdout.flush()
            code = 0 if summary.ok or not runs else 1
            finished = True
            if keep_running:
                console.print(_keep_running_text(stack), soft_wrap=True, markup=False, highlight=False)
                console.file.flush()
                _wait_until_interrupted(stack)
        except (KeyboardInterrupt, Terminated) as exc:
            name = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
            console.print(f"{name}: stopping")
            if not finished:
                code = EXIT_INTERRUPTED
                console.print(progress_table(runs, title="applications when interrupted"))
        except Exception as exc:
            console.print(f"[red]demo failed: {exc}[/red]")
            code = 1
        finally:
            pids = list(stack.pids().values())
            with signals_ignored(), console.status("stopping every process"):
                stack.stop()
            console.print(f"stopped {len(pids)} processes")
            if code == 0 and log_dir is None:
                stack.cleanup_logs()
                console.print("process logs removed (all went well; --log-dir DIR keeps them)")
            else:
                console.print(f"process logs kept in {stack.log_dir}")
    return code
