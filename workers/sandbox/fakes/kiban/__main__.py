"""``python -m workers.sandbox.fakes.kiban --port 8101 --end-callback-url http://.../{execution_id}/finished``"""

from __future__ import annotations

import argparse

from starlette.applications import Starlette

from workers.sandbox.fakes.common import serve_main
from workers.sandbox.fakes.faults import Faults
from workers.sandbox.fakes.kiban.app import create_app
from workers.sandbox.fakes.kiban.state import SCENARIOS


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default="kiban-test-key", help="x-api-key the fake accepts")
    parser.add_argument("--end-callback-url", default=None, help="template with {execution_id}")
    parser.add_argument(
        "--end-callback-api-key", default=None, help="key sent with the end-of-workfloo callback"
    )
    parser.add_argument("--end-callback-key-header", default="x-api-key", help="header that carries that key")
    parser.add_argument("--decision-delay", type=float, default=0.5, help="seconds before the decision")
    parser.add_argument("--nip-event-delay", type=float, default=0.2, help="seconds between NIP events")
    parser.add_argument(
        "--default-scenario",
        default=None,
        choices=[*SCENARIOS, None],
        help="scenario when a request sends no scenarioId (none: a 400, as in the real sandbox)",
    )


def _build(args: argparse.Namespace, faults: Faults) -> Starlette:
    return create_app(
        args.api_key,
        end_callback_url=args.end_callback_url,
        end_callback_api_key=args.end_callback_api_key,
        end_callback_key_header=args.end_callback_key_header,
        decision_delay=args.decision_delay,
        nip_event_delay=args.nip_event_delay,
        default_scenario=args.default_scenario,
        faults=faults,
    )


def main(argv: list[str] | None = None, prog: str = "python -m workers.sandbox.fakes.kiban") -> None:
    serve_main(
        argv,
        prog=prog,
        description="Fake Kiban workfloo API: the sandbox of ``kiban-workfloo.openapi.yaml`` with the "
        "integration guide's state machine, scenarios and callbacks",
        port=8101,
        add_arguments=_arguments,
        build=_build,
    )


if __name__ == "__main__":
    main()
