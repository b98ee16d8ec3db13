"""``workfloo-bridge fake kiban|kompliant``: one fake vendor on its own, for anyone integrating.

The fakes are the sandbox's (``workers.sandbox.fakes``), the same ones the tests and the demo drive: the
fake Kiban follows the workfloo OpenAPI spec and the integration guide's state machine and scenarios; the
fake Kompliant verifies KSig1 signatures. Options go to the fake's own command line, whose ``--help`` shows
every option with its default. Needs the sandbox (a checkout installed with ``make demo`` or
``pip install -e '.[sandbox]'``): the runtime wheel and the production image hold no fakes.
"""

from __future__ import annotations

import click

from workers.ops.cli.helpers import sandbox_or_exit

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.group()
def fake() -> None:
    """Run a fake vendor (sandbox): `fake kiban --help` or `fake kompliant --help` shows its options."""


@fake.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kiban(args: tuple[str, ...]) -> None:
    """Fake Kiban workfloo API on 127.0.0.1:8101 (API key kiban-test-key, sandbox NIP 123456)."""
    sandbox_or_exit("workfloo-bridge fake kiban")
    from workers.sandbox.fakes.kiban.__main__ import main

    main(list(args), prog="workfloo-bridge fake kiban")


@fake.command(context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kompliant(args: tuple[str, ...]) -> None:
    """Fake Kompliant API on 127.0.0.1:8102, verifying KSig1 signatures with its default keys."""
    sandbox_or_exit("workfloo-bridge fake kompliant")
    from workers.sandbox.fakes.kompliant import main

    main(list(args), prog="workfloo-bridge fake kompliant")
