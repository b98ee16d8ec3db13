from tests import ROOT
from workers.core.settings import Settings
from workers.ops.settings_doc import render

DOC = ROOT / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render(), "run: python -m workers.ops.settings_doc > docs/configuration.md"


def test_every_setting_is_in_the_reference() -> None:
    text = render()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in text
