import json
import logging

import pytest
import structlog

from workers.core.log import REDACTED, Redactor, configure_logging, get_logger

NIP = "483920"
API_KEY = "sk_live_8f7d6a5c4b3a2910"
RFC = "KIBA801010BPA"
PHONE = "5555555555"
EMAIL = "ana.lopez@example.com"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    configure_logging("DEBUG", "json", secrets=[API_KEY])
    yield capsys
    structlog.reset_defaults()


def test_structured_record_with_pii_comes_out_clean(json_logs: pytest.CaptureFixture[str]) -> None:
    log = get_logger("test")
    log.info(
        "nip sent",
        nip=NIP,
        x_api_key=API_KEY,
        form={"rfc_pf": RFC, "phone_number": PHONE, "first_name": "Ana"},
        note=f"customer {EMAIL} phone {PHONE} rfc {RFC} code {NIP} key {API_KEY}",
    )
    err = json_logs.readouterr().err
    record = json.loads(err.strip().splitlines()[-1])
    for value in (NIP, API_KEY, RFC, PHONE, EMAIL):
        assert value not in err
    assert record["nip"] == REDACTED
    assert record["form"]["first_name"] == "Ana"
    assert record["event"] == "nip sent"


def test_library_records_are_redacted_too(json_logs: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("uvicorn.error").warning("bad request from %s with nip=%s", EMAIL, NIP)
    err = json_logs.readouterr().err
    assert EMAIL not in err
    assert NIP not in err
    assert "bad request from" in err


def test_redactor_keeps_ids_and_timestamps() -> None:
    redactor = Redactor()
    text = "execution 657118e1d511b6e54fe2a969 at 2024-12-24T20:24:44.689415709Z status 200"
    assert redactor.text(text) == text


def test_redactor_scrubs_formatted_phone_and_key_value_pairs() -> None:
    redactor = Redactor()
    out = redactor.text("call +52 (55) 5555-5555 with x-api-key=abcDEF123 and token: zz9")
    assert "5555-5555" not in out
    assert "abcDEF123" not in out
    assert "zz9" not in out


def test_the_redis_password_never_reaches_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    from workers.core.settings import load_settings

    url = "redis://bridge:Pa55-w%2Frd@db.internal:6379/0?sentinel_password=Sent-Pa55"
    configure_logging("DEBUG", "json", secrets=load_settings(redis_url=url).secret_values())
    try:
        get_logger("test").warning("redis_down", url=url, decoded="Pa55-w/rd")
        logging.getLogger("redis").error("cannot connect to %s", url)
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "redis_down" in err and "cannot connect" in err
    assert "Pa55" not in err
