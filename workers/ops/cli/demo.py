"""``workfloo-bridge demo``: the whole bridge on an embedded stack, driven through the real flow.

Needs the sandbox (``workers/sandbox`` from a checkout, and the ``sandbox`` extra for the embedded Redis):
the runtime wheel and the production image hold neither, and the command says so. It imports the sandbox
only inside the command, so that no service ever loads the fakes.
"""

from __future__ import annotations

from pathlib import Path

import click

from workers.core.errors import SettingsError
from workers.core.settings import load_settings
from workers.ops.cli.helpers import EXIT_USAGE, fail, sandbox_or_exit


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

    Needs no configuration, but the sandbox: `make demo` installs it (runtime + sandbox extra). Exit 0
    when every application reached its expected outcome, 1 otherwise, 130 when interrupted before the end.
    """
    sandbox_or_exit("workfloo-bridge demo", need_redis_server=redis_url is None)
    from workers.sandbox.demo.runner import run_demo

    if redis_url is not None:
        try:
            load_settings(redis_url=redis_url)
        except SettingsError as exc:
            fail(str(exc).replace("REDIS_URL", "--redis-url"), EXIT_USAGE)
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
