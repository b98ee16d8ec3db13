"""End to end: receiver + real Redis + real worker processes + fake Kiban and Kompliant over HTTP.

In every scenario: exactly one Kompliant BUSINESS_APPLICATION per approved execution, none otherwise.
"""

from __future__ import annotations

import json
import subprocess
import time

from rq import Queue

from tests.support.workers_stack import BIN, DEFINITION, KIBAN_KEY, Bridge
from workers.core.contract import JOB_SERIALIZER
from workers.core.events import EventType as T
from workers.fanout.publisher import Publisher
from workers.jobs import data_keys, state
from workers.sandbox.wait import wait_until


def run_cli(bridge: Bridge, *args: str) -> str:
    done = subprocess.run(
        [str(BIN), *args], env=bridge.env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def approved_run(bridge: Bridge, scenario: str = "approved", email: str | None = None) -> str:
    execution_id = bridge.start_application(scenario, email)
    bridge.validate_nip(execution_id)
    return execution_id


def test_approved_path_hands_off_exactly_once(bridge: Bridge) -> None:
    execution_id = approved_run(bridge)
    types = bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    for expected in (
        T.APPLICATION_STARTED, T.CALLBACK_RECEIVED, T.NIP_PENDING, T.NIP_SENT, T.NIP_DELIVERED,
        T.NIP_VALIDATED, T.WORKFLOO_STATUS_CHANGED, T.WORKFLOO_COMPLETED, T.KOMPLIANT_WORKFLOW_CREATED,
    ):  # fmt: skip
        assert expected in types, expected
    assert types.count(T.WORKFLOO_COMPLETED) == 1
    assert bridge.business_applications(execution_id) == 1
    [workflow] = bridge.workflows_of(execution_id)
    assert workflow["state"] == "STARTED"
    assert bridge.field(execution_id, state.KOMPLIANT_WORKFLOW) == workflow["workflow_id"]
    completed = bridge.events(execution_id, T.WORKFLOO_COMPLETED)[0].data
    assert completed["decision"] == "approved"
    assert (completed["has_name"], completed["has_email"]) == (True, True)
    assert "applicant" not in completed
    # No name, e-mail, NIP or phone anywhere in this execution's events.
    timeline = Publisher(bridge.redis, bridge.settings).timeline(execution_id)
    dump = json.dumps([e.data for e in timeline], ensure_ascii=False)
    for secret in ("@example.com", "Ana", "López"):
        assert secret not in dump, secret
    assert not bridge.is_open(execution_id)


def test_rejected_publishes_decision_and_hands_off_nothing(bridge: Bridge) -> None:
    execution_id = approved_run(bridge, "rejected")
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED)
    assert bridge.events(execution_id, T.WORKFLOO_COMPLETED)[0].data["decision"] == "rejected"
    time.sleep(0.5)  # give a wrong hand-off the chance to show up
    assert bridge.business_applications(execution_id) == 0
    assert T.KOMPLIANT_WORKFLOW_CREATED not in bridge.types(execution_id)


def test_abandoned(bridge: Bridge) -> None:
    execution_id = approved_run(bridge, "abandoned")
    bridge.wait_types(execution_id, T.WORKFLOO_ABANDONED)
    assert bridge.business_applications(execution_id) == 0
    assert bridge.field(execution_id, state.STATUS) == "ABANDONED"


def test_nip_error_is_resent_then_delivered(bridge: Bridge) -> None:
    execution_id = bridge.start_application("nip-error")
    types = bridge.wait_types(execution_id, T.NIP_FAILED, T.NIP_RESENT, T.NIP_DELIVERED)
    failed = bridge.events(execution_id, T.NIP_FAILED)[0].data
    assert failed["recoverable"] is True and failed["resend"] == 1
    assert types.index(T.NIP_FAILED) < types.index(T.NIP_RESENT) < types.index(T.NIP_DELIVERED)
    bridge.validate_nip(execution_id)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    assert bridge.business_applications(execution_id) == 1


def test_invalid_destination_is_final_without_resend(bridge: Bridge) -> None:
    execution_id = bridge.start_application("nip-invalid")
    bridge.wait_types(execution_id, T.NIP_FAILED)
    time.sleep(0.6)  # longer than the resend delay
    failed = bridge.events(execution_id, T.NIP_FAILED)[0].data
    assert failed["recoverable"] is False and failed["why"] == "invalid_destination"
    assert T.NIP_RESENT not in bridge.types(execution_id)


def test_duplicate_and_out_of_order_callbacks(bridge: Bridge) -> None:
    bridge.kiban_faults(duplicate_callbacks=3)  # every Kiban callback delivered three times
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    # After the end: a second terminal status (new delivery id), a late NIP event, another "finished".
    terminal = {"id": execution_id, "status": "SUCCESS", "currentNodeType": ""}
    assert (
        bridge.post("/v1/kiban/status", terminal, {"x-kiban-event-id": "late-terminal-1"}).status_code < 300
    )
    late_nip = {"event": "SENT", "date": "2020-01-01T00:00:00Z", "linkId": "late-link"}
    assert bridge.post(f"/v1/kiban/executions/{execution_id}/nip-events", late_nip).status_code < 300
    assert (
        bridge.post(f"/v1/kiban/executions/{execution_id}/finished", {"id": execution_id}).status_code < 300
    )
    wait_until(
        lambda: len(bridge.events(execution_id, T.NIP_SENT)) >= 2,
        timeout=10,
        what="the late NIP event to be processed",
    )
    queue = Queue("workfloo", connection=bridge.redis, serializer=JOB_SERIALIZER)
    wait_until(
        lambda: queue.count == 0 and queue.started_job_registry.count == 0,
        timeout=10,
        what="the queue to drain",
    )
    types = bridge.types(execution_id)
    assert types.count(T.WORKFLOO_COMPLETED) == 1
    assert types.count(T.KOMPLIANT_WORKFLOW_CREATED) == 1
    assert types.count(T.KOMPLIANT_WORKFLOW_STARTED) == 1
    assert bridge.business_applications(execution_id) == 1
    assert not bridge.is_open(execution_id)  # the late NIP event did not reopen it


def test_vendor_503_burst_is_retried(bridge: Bridge) -> None:
    bridge.kompliant_faults(fail_next=4, fail_status=503, fail_retry_after=None)
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED, timeout=30)
    assert bridge.kompliant_state.faults.knobs.fail_next == 0  # the burst was really served
    assert bridge.business_applications(execution_id) == 1
    assert T.ACTION_FAILED not in bridge.types(execution_id)


def test_duplicate_email_is_a_conflict_not_a_rejection_nor_a_dead_letter(bridge: Bridge) -> None:
    email = "same-person@example.com"
    first = approved_run(bridge, email=email)
    bridge.wait_types(first, T.KOMPLIANT_WORKFLOW_STARTED)
    second = approved_run(bridge, email=email)
    bridge.wait_types(second, T.KOMPLIANT_WORKFLOW_CONFLICT)
    conflict = bridge.events(second, T.KOMPLIANT_WORKFLOW_CONFLICT)[0].data
    assert conflict["sub_code"] == "DUPLICATE_EMAIL"
    assert T.KOMPLIANT_WORKFLOW_REJECTED not in bridge.types(second)
    assert bridge.business_applications(first) == 1
    assert bridge.business_applications(second) == 0
    assert T.ACTION_FAILED not in bridge.types(second)
    letters = json.loads(run_cli(bridge, "dlq", "list", "--json"))
    assert not [x for x in letters if x["execution_id"] == second]


def test_permanent_4xx_dead_letters_then_replays(bridge: Bridge) -> None:
    bridge.kompliant_faults(fail_next=1000, fail_status=400, fail_retry_after=None)
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.WORKFLOO_COMPLETED, T.ACTION_FAILED)

    def dead_letters() -> list[dict[str, object]]:
        letters = json.loads(run_cli(bridge, "dlq", "list", "--json"))
        return [x for x in letters if x["execution_id"] == execution_id]

    letters = wait_until(dead_letters, timeout=15, what="a dead letter for the execution")
    assert "permanent" in str(letters[0]["reason"])
    assert bridge.business_applications(execution_id) == 0
    failed = bridge.events(execution_id, T.ACTION_FAILED)[0].data
    assert failed["retryable"] is False and "400" in failed["reason"]

    bridge.reset_faults()
    for letter in dead_letters():
        assert f"replayed {letter['job_id']}" in run_cli(bridge, "dlq", "replay", str(letter["job_id"]))
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    assert bridge.business_applications(execution_id) == 1
    assert dead_letters() == []


def _rerun_validate(
    bridge: Bridge, execution_id: str, command_id: str, crashed: bool, stashed: bool = True
) -> dict[str, object]:
    """Run validate_nip again for an execution whose NIP Kiban already accepted: its NIP re-stashed, or
    (``stashed=False``) already dropped, as by a first run killed after it dropped the stash."""
    if stashed:
        state.stash_nip(bridge.redis, command_id, "123456", data_keys(bridge.settings))
    job = Queue(bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER).enqueue(
        "workers.jobs.commands.validate_nip",
        {"execution_id": execution_id, "nip_ref": command_id, "command_id": command_id},
        job_id=f"rerun-{command_id}",
        meta={"crash_requeues": 1} if crashed else {},
    )
    wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=20, what="the validate job")
    result: dict[str, object] = job.return_value()
    return result


def test_validate_rerun_after_a_crash_is_not_reported_as_a_wrong_nip(bridge: Bridge) -> None:
    """A worker killed after Kiban accepted both validations: the reaper's re-run gets Kiban's "not a NIP
    step" 400. That is the first run's success, not the applicant's mistake (seen in the scale-out proof)."""
    execution_id = approved_run(bridge)
    bridge.wait_types(execution_id, T.KOMPLIANT_WORKFLOW_STARTED)
    assert _rerun_validate(bridge, execution_id, "rerun-after-crash", crashed=True)["valid"] is True
    # Killed after it dropped the stash, before its event: the re-run finds no NIP, and Kiban past the step.
    assert (
        _rerun_validate(bridge, execution_id, "rerun-no-stash", crashed=True, stashed=False)["valid"] is True
    )
    assert T.ACTION_FAILED not in bridge.types(execution_id)
    # The same 400 on a first run is a late NIP: reported, as before.
    assert _rerun_validate(bridge, execution_id, "late-nip", crashed=False)["valid"] is False
    assert T.ACTION_FAILED in bridge.types(execution_id)


def test_start_rerun_after_the_form_was_accepted_finishes(bridge: Bridge) -> None:
    """A start job killed after Kiban accepted the form but before its checkpoint: the reaper's re-run
    gets 409 from /form (Kiban is past the FORM step) and must carry on, not fail the application."""
    from workers.vendors.kiban.client import KibanClient

    form = {"first_name": "Ana", "last_name_1": "López", "email": "rerun@example.com"}
    # What the first run did before it died: execute, and the form accepted.
    with KibanClient(bridge.kiban.url, api_key=KIBAN_KEY, sandbox=True) as kiban:
        execution_id = kiban.execute(DEFINITION, scenario_id="approved")
        kiban.submit_form(execution_id, form)
    job = Queue(bridge.settings.bridge_queue, connection=bridge.redis, serializer=JOB_SERIALIZER).enqueue(
        "workers.jobs.commands.start_application",
        {"command_id": "rerun-start", "form": form, "scenario_id": "approved"},
        job_id="rerun-start",
        meta={"execution_id": execution_id},  # the checkpoint the first run wrote before it died
    )
    wait_until(
        lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=20, what="the start job"
    )
    assert job.get_status() == "finished", job.latest_result().exc_string if job.latest_result() else None
    assert job.return_value() == {"execution_id": execution_id}


def test_a_retried_nip_command_validates_once(bridge: Bridge) -> None:
    """A client that sends its NIP command again after the first was validated: with the same
    idempotency key it gets the first command back and the application goes on; without one the second
    validation meets Kiban past the NIP step and a good NIP is reported as ``action.failed``."""
    from workers.jobs import api

    keyed, plain = bridge.start_application("approved"), bridge.start_application("approved")
    bridge.wait_nip_phase([keyed, plain])
    first = api.validate_nip(bridge.redis, keyed, "123456", settings=bridge.settings, idempotency_key="k1")
    api.validate_nip(bridge.redis, plain, "123456", settings=bridge.settings)
    bridge.wait_types(keyed, T.NIP_VALIDATED)
    bridge.wait_types(plain, T.NIP_VALIDATED)

    again = api.validate_nip(bridge.redis, keyed, "123456", settings=bridge.settings, idempotency_key="k1")
    api.validate_nip(bridge.redis, plain, "123456", settings=bridge.settings)

    assert again == first
    bridge.wait_types(plain, T.ACTION_FAILED)  # the hole the key closes
    types = bridge.wait_types(keyed, T.KOMPLIANT_WORKFLOW_STARTED)
    assert T.ACTION_FAILED not in types and types.count(T.NIP_VALIDATED) == 1
