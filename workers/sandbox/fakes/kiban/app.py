"""Assembly of the fake Kiban: ``create_app(...)`` returns a Starlette app whose ``app.state.fake`` is
the inspectable ``FakeKibanState``."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from starlette.applications import Starlette

from workers.sandbox.fakes.common import fake_app
from workers.sandbox.fakes.delivery import CallbackSender
from workers.sandbox.fakes.faults import Faults
from workers.sandbox.fakes.kiban.api import api_routes
from workers.sandbox.fakes.kiban.control import control_routes
from workers.sandbox.fakes.kiban.state import SCENARIOS, FakeKibanState


def create_app(
    api_key: str = "kiban-test-key",
    *,
    end_callback_url: str | None = None,
    end_callback_api_key: str | None = None,
    end_callback_key_header: str = "x-api-key",
    end_callback_statuses: Collection[str] = ("SUCCESS", "ERROR", "ABANDONED"),
    scenarios: Mapping[str, str] | None = None,
    definitions: Collection[str] | None = None,
    default_scenario: str | None = None,
    decision_delay: float = 0.05,
    nip_event_delay: float = 0.02,
    callback_timeout: float = 2.0,
    faults: Faults | None = None,
    workfloo_name: str = "Originación PF con NIP",
) -> Starlette:
    """Build a fake Kiban.

    ``scenarios`` maps extra scenarioIds onto the built-in scenario names (the names themselves always
    work). ``definitions``: accepted ``idWorkflooDefinition`` values (None: any). ``default_scenario``:
    used when no scenarioId is sent (None: a missing scenarioId is a 400, as in the real sandbox).
    """
    faults = faults or Faults()
    mapping = {name: name for name in SCENARIOS}
    for scenario_id, name in (scenarios or {}).items():
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        mapping[scenario_id] = name
    state = FakeKibanState(
        api_key=api_key,
        faults=faults,
        sender=CallbackSender(faults, timeout=callback_timeout),
        scenarios=mapping,
        definitions=definitions,
        default_scenario=default_scenario,
        end_callback_url=end_callback_url,
        end_callback_api_key=end_callback_api_key,
        end_callback_key_header=end_callback_key_header,
        end_callback_statuses=end_callback_statuses,
        decision_delay=decision_delay,
        nip_event_delay=nip_event_delay,
        workfloo_name=workfloo_name,
    )
    return fake_app(
        state,
        faults,
        api_routes=api_routes(state, api_key),
        control_routes=control_routes(state),
        on_shutdown=state.close,
    )
