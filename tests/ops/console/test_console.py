"""The operator console in a real Chromium (Playwright), over the end-to-end stack: real worker processes,
the fakes over HTTP, a real redis-server, the console mounted on a receiver's internal listener."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.test_flow import approved_run
from tests.ops.console.conftest import ARTIFACTS, SSO_HEADER, SUBSCRIBER, sign_in
from tests.support.workers_stack import INTERNAL_KEY, Bridge
from workers.core import keys
from workers.core.events import Event
from workers.core.events import EventType as T
from workers.core.settings import get_settings
from workers.jobs import api as commands_api
from workers.ops.console.app import key_id
from workers.sandbox.serving import ServerThread, bind
from workers.sandbox.wait import wait_until


def operator_actions(bridge: Bridge) -> list[dict[str, Any]]:
    found = []
    for _, fields in bridge.redis.xrange(bridge.settings.events_stream):
        if fields.get(b"type") == T.OPERATOR_ACTION.value.encode():
            found.append(json.loads(fields[b"event"]))
    return found


def test_console_answers_on_the_internal_listener_only(console: ServerThread) -> None:
    assert httpx.get(f"{console.url}/console/login").status_code == 404
    answer = httpx.get(f"{console.internal_url}/console/login")
    assert answer.status_code == 200
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert httpx.get(f"{console.internal_url}/console/static/console.css").status_code == 200
    # Not signed in: every page sends the browser to the sign-in form.
    answer = httpx.get(f"{console.internal_url}/console/dead-letters", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/login")


def test_serve_mounts_the_console_on_the_internal_listener(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workfloo-bridge serve``'s app factory: the receiver with the console on its internal side."""
    from workers.ops.cli import serve

    public, internal = bind("127.0.0.1"), bind("127.0.0.1")
    for name, value in bridge.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_PUBLIC_PORT", str(public.getsockname()[1]))
    monkeypatch.setenv("BRIDGE_INTERNAL_PORT", str(internal.getsockname()[1]))
    get_settings.cache_clear()
    try:
        server = ServerThread(serve.create_app(), sockets=[public, internal]).start()
    finally:
        get_settings.cache_clear()
    try:
        assert httpx.get(f"{server.internal_url}/console/login").status_code == 200
        assert httpx.get(f"{server.url}/console/login").status_code == 404
        assert httpx.get(f"{server.internal_url}/readyz").status_code == 200
    finally:
        server.stop()


def test_sign_in_find_an_application_and_open_its_timeline(
    bridge: Bridge, console: ServerThread, page: Any
) -> None:
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)

    sign_in(page, console, key="in-not-a-key")
    assert page.get_by_role("alert").inner_text() == "That key is not accepted."
    sign_in(page, console)
    page.wait_for_url("**/console/")
    assert page.locator("#actor").inner_text() == f"key:{key_id(INTERNAL_KEY)}"
    [cookie] = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")

    page.click("text=Applications")
    assert execution_id in page.locator("#recent").inner_text()
    page.fill("input[name=q]", execution_id)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/console/applications/{execution_id}")
    timeline = page.locator("#timeline").inner_text()
    for expected in (T.APPLICATION_STARTED, T.NIP_VALIDATED, T.KOMPLIANT_WORKFLOW_STARTED):
        assert expected in timeline
    assert "workflow_id" in page.content()  # the Kompliant ids the events carry
    assert "López" not in page.content() and "@example.com" not in page.content()  # no applicant data

    # A caller that only knows its command id finds the application too.
    command_id = commands_api.start_application(
        bridge.redis, bridge.form(), "approved", settings=bridge.settings
    )
    started = wait_until(
        lambda: (r := commands_api.command_result(bridge.redis, command_id)) and r["result"],
        timeout=15,
        what="the start command's result",
    )
    page.goto(f"{console.internal_url}/console/applications?q={command_id}")
    page.wait_for_url(f"**/console/applications/{started['execution_id']}")
    assert T.APPLICATION_STARTED in page.locator("#timeline").inner_text()
    page.goto(f"{console.internal_url}/console/applications?q=no-such-thing")
    assert "No application found" in page.get_by_role("alert").inner_text()


def test_replay_a_dead_letter_and_see_it_succeed(bridge: Bridge, console: ServerThread, page: Any) -> None:
    bridge.kompliant_faults(fail_next=1000, fail_status=400, fail_retry_after=None)
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED, T.ACTION_FAILED)
    bridge.reset_faults()

    sign_in(page, console)
    page.goto(f"{console.internal_url}/console/dead-letters")
    rows = page.locator("#dead-letters tr", has_text=execution_id)

    def listed() -> bool:
        page.reload()
        return rows.count() >= 1

    wait_until(listed, timeout=15, what="the execution's dead letters listed")
    replayed = []
    # The first from the application's own page (its failed jobs), the others from the list.
    page.goto(f"{console.internal_url}/console/applications/{execution_id}")
    first = page.get_by_role("button", name="Replay").first
    job_id = str(page.locator("form[action$='/replay']").first.get_attribute("action")).split("/")[-2]
    first.click()
    page.wait_for_url(f"**/console/applications/{execution_id}")
    assert page.get_by_role("status").inner_text() == f"Replayed {job_id}."
    replayed.append(job_id)
    page.goto(f"{console.internal_url}/console/dead-letters")
    while rows.count():  # the status and the finished callbacks' jobs both died on the hand-off
        row = rows.first
        job_id = str(row.get_attribute("data-job"))
        assert "permanent" in row.inner_text()
        row.get_by_role("button", name="Replay").click()
        assert page.get_by_role("status").inner_text() == f"Replayed {job_id}."
        replayed.append(job_id)
        page.goto(f"{console.internal_url}/console/dead-letters")

    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    assert bridge.business_applications(execution_id) == 1
    page.goto(f"{console.internal_url}/console/applications/{execution_id}")
    assert page.locator("#state").inner_text() != T.OPERATOR_ACTION  # the application's own state
    assert "workflow_id" in page.content()  # the hand-off's Kompliant ids, now that it succeeded
    assert T.OPERATOR_ACTION in page.locator("#timeline").inner_text()
    audits = [a for a in operator_actions(bridge) if a["data"]["target"] in replayed]
    assert [a["execution_id"] for a in audits] == [execution_id] * len(replayed)
    assert [a["data"] for a in audits] == [
        {
            "actor": f"key:{key_id(INTERNAL_KEY)}",
            "action": "dead_letter.replay",
            "target": job,
            "outcome": "done",
        }
        for job in replayed
    ]


def test_disable_and_enable_a_subscriber(bridge: Bridge, console: ServerThread, page: Any) -> None:
    sign_in(page, console)
    page.goto(f"{console.internal_url}/console/subscribers")
    row = page.locator(f"tr[data-subscriber={SUBSCRIBER}]")
    assert row.locator(".state").inner_text() == "enabled"
    row.get_by_role("button", name="Disable").click()
    assert row.locator(".state").inner_text() == "disabled (operator)"
    assert bridge.redis.exists(keys.subscriber_disabled(SUBSCRIBER))
    row.get_by_role("button", name="Enable").click()
    assert row.locator(".state").inner_text() == "enabled"
    assert not bridge.redis.exists(keys.subscriber_disabled(SUBSCRIBER))
    actions = [a["data"]["action"] for a in operator_actions(bridge) if a["data"]["target"] == SUBSCRIBER]
    assert actions[-2:] == ["subscriber.disable", "subscriber.enable"]


def test_behind_an_sso_proxy_the_audit_names_the_person(
    bridge: Bridge, sso_console: ServerThread, browser: Any
) -> None:
    context = browser.new_context(extra_http_headers={SSO_HEADER: "ops.lead@bridge.example"})
    try:
        page = context.new_page()
        sign_in(page, sso_console)
        page.wait_for_url("**/console/")
        assert page.locator("#actor").inner_text() == "sso:ops.lead@bridge.example"
        page.goto(f"{sso_console.internal_url}/console/subscribers")
        row = page.locator(f"tr[data-subscriber={SUBSCRIBER}]")
        row.get_by_role("button", name="Disable").click()
        row.get_by_role("button", name="Enable").click()
        assert row.locator(".state").inner_text() == "enabled"
    finally:
        context.close()
    actors = [a["data"]["actor"] for a in operator_actions(bridge) if a["data"]["target"] == SUBSCRIBER]
    assert actors[-2:] == ["sso:ops.lead@bridge.example"] * 2


def test_a_forged_csrf_post_is_refused(bridge: Bridge, console: ServerThread, page: Any) -> None:
    sign_in(page, console)
    page.wait_for_url("**/console/")
    before = len(operator_actions(bridge))
    # The signed-in browser's own cookie, but a token the page never gave it.
    url = f"{console.internal_url}/console/subscribers/{SUBSCRIBER}/disable"
    for form in ({"csrf": "forged"}, {}):
        answer = page.request.post(url, form=form, max_redirects=0)
        assert answer.status == 403
    # Nor can a page elsewhere sign a browser in with a key of its choosing (login CSRF).
    answer = page.request.post(
        f"{console.internal_url}/console/login", form={"key": INTERNAL_KEY}, max_redirects=0
    )
    assert answer.status == 403
    assert not bridge.redis.exists(keys.subscriber_disabled(SUBSCRIBER))
    assert len(operator_actions(bridge)) == before


def test_replay_all_dead_letters_from_the_list(bridge: Bridge, console: ServerThread, page: Any) -> None:
    bridge.kompliant_faults(fail_next=1000, fail_status=400, fail_retry_after=None)
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED, T.ACTION_FAILED)
    bridge.reset_faults()

    sign_in(page, console)
    page.goto(f"{console.internal_url}/console/dead-letters")
    rows = page.locator("#dead-letters tr", has_text=execution_id)

    def listed() -> bool:
        page.reload()
        return rows.count() >= 1

    wait_until(listed, timeout=15, what="the execution's dead letters listed")
    jobs = {str(rows.nth(i).get_attribute("data-job")) for i in range(rows.count())}
    page.locator("#replay-all").get_by_role("button", name="Replay all").click()
    assert page.get_by_role("status").inner_text().startswith("Replayed ")
    assert rows.count() == 0
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    audits = [a for a in operator_actions(bridge) if a["data"]["action"] == "dead_letter.replay_all"]
    mine = {a["data"]["target"] for a in audits if a["execution_id"] == execution_id}
    assert jobs <= mine
    assert all(a["data"]["outcome"] == "done" for a in audits if a["data"]["target"] in jobs)
    # Without the page's token the post changes nothing.
    answer = page.request.post(
        f"{console.internal_url}/console/dead-letters/replay-all", form={"csrf": "forged"}, max_redirects=0
    )
    assert answer.status == 403


def test_filter_applications_by_state(bridge: Bridge, console: ServerThread, page: Any) -> None:
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    sign_in(page, console)
    page.wait_for_url("**/console/")
    mine = page.locator(f"#recent tr[data-execution='{execution_id}']")

    def filtered_by_its_state() -> bool:
        # Callbacks may still move it on between the two reads: retry until both agree.
        page.goto(f"{console.internal_url}/console/applications")
        state = mine.locator(".state").inner_text()
        assert state in ("handed off", "completed", "open")  # derived from its latest event
        page.select_option("#state-filter select[name=state]", state)
        page.locator("#state-filter").get_by_role("button", name="Filter").click()
        page.wait_for_url("**/console/applications?state=*")
        assert set(page.locator("#recent td.state").all_inner_texts()) == {state}
        return mine.count() == 1

    wait_until(filtered_by_its_state, timeout=15, what="the application listed under its state")
    page.goto(f"{console.internal_url}/console/applications?state=failed")
    assert page.locator(f"#recent tr[data-execution='{execution_id}']").count() == 0
    assert set(page.locator("#recent td.state").all_inner_texts()) <= {"failed"}


def test_resend_the_nip_from_an_application(bridge: Bridge, console: ServerThread, page: Any) -> None:
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.NIP_VALIDATED)
    sign_in(page, console)
    page.wait_for_url("**/console/")
    page.goto(f"{console.internal_url}/console/applications/{execution_id}")
    page.locator("#resend-nip").get_by_role("button", name="Resend NIP").click()
    page.wait_for_url(f"**/console/applications/{execution_id}")
    flash = page.get_by_role("status").inner_text()
    assert flash.startswith("NIP resend queued as ")
    command_id = flash.removeprefix("NIP resend queued as ").rstrip(".")
    assert commands_api.command_result(bridge.redis, command_id) is not None  # the same command job
    [audit] = [a for a in operator_actions(bridge) if a["data"]["action"] == "nip.resend"][-1:]
    assert audit["execution_id"] == execution_id
    assert audit["data"] == {
        "actor": f"key:{key_id(INTERNAL_KEY)}",
        "action": "nip.resend",
        "target": execution_id,
        "outcome": "queued",
    }
    answer = page.request.post(
        f"{console.internal_url}/console/applications/no-such-execution/resend-nip",
        form={"csrf": "forged"},
        max_redirects=0,
    )
    assert answer.status == 403


def test_list_and_replay_a_consumer_dead_event(bridge: Bridge, console: ServerThread, page: Any) -> None:
    event = Event(
        type=T.NIP_SENT,
        execution_id="exec-dead-1",
        data={"date": "2026-12-06T05:00:00Z", "link_id": "LINK-SECRET-1"},
    )
    fields: dict[Any, Any] = {
        "original_stream": bridge.settings.events_stream, "original_id": "1-0", "group": "crm",
        "consumer": "crm-1", "type": event.type, "execution_id": "exec-dead-1", "event": event.to_json(),
        "reason": "delivered 5 times without ack", "deliveries": 6,
    }  # fmt: skip
    entry = bytes(bridge.redis.xadd(keys.DEAD_LETTER_STREAM, fields)).decode()  # type: ignore[arg-type]

    sign_in(page, console)
    page.wait_for_url("**/console/")
    page.click("text=Dead events")
    row = page.locator(f"#dead-events tr[data-entry='{entry}']")
    text = row.inner_text()
    for expected in ("crm", "delivered 5 times without ack", "6", "nip.sent", "exec-dead-1"):
        assert expected in text
    assert "LINK-SECRET-1" not in page.content()  # never the event itself
    row.get_by_role("button", name="Replay").click()
    assert page.get_by_role("status").inner_text() == f"Replayed {entry}."
    assert row.count() == 0
    back = [f for _, f in bridge.redis.xrevrange(bridge.settings.events_stream, count=50)]
    assert any(Event.from_json(f[b"event"]) == event for f in back if f.get(b"type") == b"nip.sent")
    [audit] = [a for a in operator_actions(bridge) if a["data"]["target"] == entry]
    assert (audit["execution_id"], audit["data"]["action"], audit["data"]["outcome"]) == (
        "exec-dead-1",
        "dead_event.replay",
        "done",
    )


SCREENSHOTS = ("overview", "application", "dead-letters")


def test_screenshots_of_the_main_pages(bridge: Bridge, console: ServerThread, page: Any) -> None:
    """The pages docs/images/console-*.png show, over a run with a dead letter; kept in
    artifacts/browser/ (``make console-screenshots`` copies them into docs/images/)."""
    bridge.kompliant_faults(fail_next=1000, fail_status=400, fail_retry_after=None)
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED, T.ACTION_FAILED)
    bridge.reset_faults()
    sign_in(page, console)
    page.wait_for_url("**/console/")
    page.set_viewport_size({"width": 1280, "height": 900})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    urls = {
        "overview": "/console/",
        "application": f"/console/applications/{execution_id}",
        "dead-letters": "/console/dead-letters",
    }
    rows = page.locator("#dead-letters tr", has_text=execution_id)

    def listed() -> bool:
        page.goto(f"{console.internal_url}/console/dead-letters")
        return rows.count() >= 1

    wait_until(listed, timeout=15, what="the execution's dead letters listed")
    for name in SCREENSHOTS:
        page.goto(f"{console.internal_url}{urls[name]}")
        shot = ARTIFACTS / f"console-{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "López" not in page.content() and "@example.com" not in page.content()
    page.goto(f"{console.internal_url}/console/dead-letters")
    page.locator("#replay-all").get_by_role("button", name="Replay all").click()  # leave none behind
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
