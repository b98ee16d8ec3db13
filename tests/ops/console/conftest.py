"""Fixtures of the console's browser tests: a real Chromium driven by Playwright, the console mounted on
a receiver's internal listener over the end-to-end stack, and a screenshot of every failed test kept in
``artifacts/browser/`` (gitignored; CI keeps it as an artefact)."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.workers_stack import INTERNAL_KEY, Bridge
from workers.core.settings import HttpSubscriber
from workers.ops.console import console_routes
from workers.sandbox.serving import ServerThread, receiver_thread

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "browser"
SUBSCRIBER = "audit-sink"
DEBIAN_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """Debian's chromium when present, else None (Playwright's own browser, if installed)."""
    for candidate in (DEBIAN_CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running until it stops, and the
    asyncio tests of later modules cannot start theirs while it does."""
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        path = chromium_path()
        try:
            launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except Error as exc:
            pytest.fail(
                "no Chromium for the console's browser tests: install Debian's (apt-get install -y "
                "chromium; .ci/run does) or Playwright's own (python -m playwright install chromium): "
                f"{str(exc).splitlines()[0]}",
                pytrace=False,
            )
        yield launched
        launched.close()


SSO_HEADER = "X-Forwarded-Email"


@pytest.fixture(scope="module")
def console(bridge: Bridge) -> Iterator[ServerThread]:
    """A receiver with the console on its internal listener, on the stack's Redis; one HTTP subscriber
    configured for the subscriber pages."""
    yield from _console(bridge)


@pytest.fixture(scope="module")
def sso_console(bridge: Bridge) -> Iterator[ServerThread]:
    """The same behind an SSO proxy: ``BRIDGE_CONSOLE_SSO_HEADER`` names the proxy's identity header."""
    yield from _console(bridge, bridge_console_sso_header=SSO_HEADER)


def _console(bridge: Bridge, **overrides: Any) -> Iterator[ServerThread]:
    subscriber = HttpSubscriber(
        url="https://hooks.example.com/bridge",
        secret="whsec_" + base64.b64encode(b"console-test-secret-of-32-bytes!").decode(),
        id=SUBSCRIBER,
    )
    settings = bridge.settings.model_copy(update={"bridge_http_subscribers": [subscriber], **overrides})
    server = receiver_thread(settings, internal_routes=console_routes).start()
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; its screenshot is kept when the test fails."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    if request.node.stash.get(FAILED, False):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
    context.close()


def sign_in(page: Any, console: ServerThread, key: str = INTERNAL_KEY) -> None:
    page.goto(f"{console.internal_url}/console/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
