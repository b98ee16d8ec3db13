"""The events the bridge publishes fit the checked-in contract (docs/schemas/events/*.json): the approved,
rejected, abandoned and NIP-error flows and an erasure, through the receiver and real worker processes,
every stream entry validated against the schema of its type."""

from __future__ import annotations

import subprocess

from tests.support.bridge import BIN, Bridge
from tests.support.event_contract import check_stream, problems_of
from workers.core.events import Event
from workers.core.events import EventType as T


def test_every_published_event_validates_against_its_schema(bridge: Bridge) -> None:
    flows = {
        scenario: bridge.start_application(scenario) for scenario in ("approved", "rejected", "abandoned")
    }
    nip_error = bridge.start_application("nip-error")
    for execution_id in flows.values():
        bridge.validate_nip(execution_id)
    bridge.wait_types(flows["approved"], T.KOMPLIANT_WORKFLOW_STARTED)
    bridge.wait_types(flows["rejected"], T.WORKFLOO_COMPLETED)
    bridge.wait_types(flows["abandoned"], T.WORKFLOO_ABANDONED)
    bridge.wait_types(nip_error, T.NIP_FAILED, T.NIP_RESENT, T.NIP_DELIVERED)
    subprocess.run(
        [str(BIN), "forget", flows["rejected"], "--force"],
        env=bridge.env,
        check=True,
        timeout=30,
        capture_output=True,
    )

    check = check_stream(bridge.redis, bridge.settings.events_stream)

    assert not check.problems, "\n".join(check.problems[:20])
    for expected in (
        T.APPLICATION_STARTED, T.CALLBACK_RECEIVED, T.NIP_PENDING, T.NIP_SENT, T.NIP_DELIVERED, T.NIP_FAILED,
        T.NIP_RESENT, T.NIP_VALIDATED, T.WORKFLOO_STATUS_CHANGED, T.WORKFLOO_COMPLETED, T.WORKFLOO_ABANDONED,
        T.KOMPLIANT_WORKFLOW_CREATED, T.KOMPLIANT_WORKFLOW_STARTED, T.APPLICATION_FORGOTTEN,
    ):  # fmt: skip
        assert check.types[expected] >= 1, expected


def test_the_check_catches_an_event_off_its_schema() -> None:
    good = Event(type=T.NIP_RESENT, execution_id="e1", data={"resend": 1, "command_id": None})
    assert problems_of(_envelope(good)) == []
    missing = Event(type=T.NIP_RESENT, execution_id="e1", data={"resend": 1})
    assert any("command_id" in problem for problem in problems_of(_envelope(missing)))
    data = {"date": "d", "link_id": None, "error_message": None, "recoverable": "yes", "resend": None}
    wrong = Event(type=T.NIP_FAILED, data={**data, "why": "bored"})
    problems = problems_of(_envelope(wrong))
    assert any("recoverable" in p for p in problems) and any("why" in p for p in problems)
    assert problems_of({**_envelope(good), "type": "nip.unknown"})[-1] == "no schema for type 'nip.unknown'"


def _envelope(event: Event) -> dict[str, object]:
    import json

    loaded: dict[str, object] = json.loads(event.to_json())
    return loaded
