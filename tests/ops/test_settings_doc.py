from collections import Counter

from tests import ROOT
from workers.core.settings import Settings, env_name
from workers.ops.settings_doc import render, sections

DOC = ROOT / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render(), "run: python -m workers.ops.settings_doc > docs/configuration.md"


def test_every_setting_is_in_the_reference() -> None:
    text = render()
    for name in Settings.model_fields:
        assert f"`{env_name(name)}`" in text


def test_every_setting_belongs_to_exactly_one_section() -> None:
    counts = Counter(name for section in sections() for name in section.model_fields)
    assert counts.keys() == Settings.model_fields.keys()
    assert {name for name, count in counts.items() if count != 1} == set()


def test_every_section_has_a_title_and_a_one_line_docstring() -> None:
    for section in sections():
        assert section.model_config.get("title"), section.__name__
        assert section.__doc__ and "\n" not in section.__doc__.strip(), section.__name__


def test_secrets_show_no_default() -> None:
    rows = [line.split(" | ") for line in render().splitlines() if line.startswith("| `")]
    defaults = {cells[0].strip("| `"): cells[2] for cells in rows}
    secrets = (
        "BRIDGE_KIBAN_API_KEY",
        "BRIDGE_CALLBACK_KEYS",
        "BRIDGE_HTTP_SUBSCRIBERS",
        "BRIDGE_REDIS_SENTINEL_PASSWORD",
    )
    for name in secrets:
        assert defaults[name] == "—", name
    assert defaults["BRIDGE_QUEUE"] == "`workfloo`"
