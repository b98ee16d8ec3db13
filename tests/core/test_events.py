"""docs/events.md documents every event type, with its data fields and an example."""

from __future__ import annotations

import re

from tests import ROOT
from workers.core.events import EventType

DOC = ROOT / "docs" / "events.md"


def test_every_event_type_has_a_catalogue_entry_and_an_example() -> None:
    text = DOC.read_text()
    headings = " ".join(re.findall(r"^### (.+)$", text, flags=re.MULTILINE))
    examples = re.findall(r'"type": "([a-z_.]+)"', text)
    for event_type in EventType:
        assert f"`{event_type.value}`" in headings, f"{event_type.value} has no catalogue section"
    documented = set(examples)
    families = {t.rsplit(".", 1)[0] for t in documented}
    for event_type in EventType:
        assert event_type.value in documented or event_type.value.rsplit(".", 1)[0] in families, event_type
