import json
import logging

import pytest
import structlog

from workers.core.errors import (
    ErrorBody,
    FieldError,
    JobFailedError,
    KibanValidationError,
    KompliantBadRequestError,
    TransientError,
)
from workers.core.log import (
    REDACTED,
    Redactor,
    configure_logging,
    error_reason,
    get_logger,
    is_sensitive_key,
    safe_traceback,
)

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
    assert record["form"]["first_name"] == REDACTED
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


# --- the canary set: awkward forms of applicant data and credentials ---------------------------------

CANARY_FORM = {
    "first_name": "José María",
    "last_name_1": "Núñez",
    "apellido_materno": "Peña",
    "nombre": "Begoña",
    "domicilio": {"calle": "Insurgentes Sur 1602", "colonia": "Crédito Constructor", "cp": "03940"},
    "codigo_postal": "03940",
    "address_line": "Av. Álvaro Obregón 12",
    "fecha_nacimiento": "1956-12-31",
    "birthDate": "1956-12-31",
    "rfc_pf": "GODE-561231-GR8",
    "curp": "GODE561231HDFRRN09",
    "telefono": 5512349876,
    "celular": "55 1234 9876",
    "phoneNumber": "+52 (55) 1234-9876",
    "correo": "jose.nunez%40example.com",
    "email": "jose.nunez@example.com",
    "nip": 4821,
    "nip_bureau": "48213579",
}
# Every value above that must never be seen, as it may appear in text (a repr, a traceback, a URL).
CANARIES = [
    "José María", "Núñez", "Peña", "Begoña", "Insurgentes", "Crédito Constructor", "03940", "Obregón",
    "1956-12-31", "GODE-561231-GR8", "GODE561231GR8", "GODE561231HDFRRN09", "5512349876", "1234 9876",
    "1234-9876", "jose.nunez%40example.com", "jose.nunez@example.com", "4821", "48213579",
]  # fmt: skip
CREDENTIALS = {
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl": "eyJhbGciOiJIUzI1NiJ9",
    "Authorization: KSig1-HMAC-SHA256 Credential=kp_live_77, Signature=9f86d081884c7d65": "9f86d081884c7d65",
    "headers={'authorization': 'KSig1-HMAC-SHA256 ab12cd34ef56', 'x-api-key': 'k-91f3e2a0'}": "ab12cd34ef56",
    "x-api-key: k-91f3e2a0": "k-91f3e2a0",
    "GET /oauth/cb?access_token=at.9Zq81xLm&state=1 HTTP/1.1": "at.9Zq81xLm",
    "POST /v1/x?email=ana.ruiz%2540example.net": "ana.ruiz",
}


def _seen(text: str) -> list[str]:
    return [c for c in CANARIES if c.lower() in text.lower()]


def test_canary_form_as_a_structured_value_is_scrubbed() -> None:
    out = json.dumps(Redactor().value({"form": CANARY_FORM, "rows": [CANARY_FORM]}), ensure_ascii=False)
    assert not _seen(out), _seen(out)
    assert out.count(REDACTED) >= 2 * 16


@pytest.mark.parametrize("render", [repr, str, lambda f: json.dumps(f, ensure_ascii=False)])
def test_canary_form_as_text_is_scrubbed(render: object) -> None:
    """A form rendered into text (RQ's job description, a traceback's locals, a vendor's echo)."""
    text = f"job failed: start_application({render(CANARY_FORM)})"  # type: ignore[operator]
    out = Redactor().text(text)
    assert not _seen(out), (_seen(out), out)
    assert out.startswith("job failed: start_application(")


@pytest.mark.parametrize(
    "text",
    [
        "rfc GODE-561231-GR8 or GODE561231GR8 or gode 561231 gr8",
        "curp GODE561231HDFRRN09",
        "mail jose.nunez%40example.com or jose.nunez%2540example.com",
        "llamar al %2B525512349876 o al +52 55 1234 9876",
        "nip=4821 NIP: 48213579 'nip': '4821' \"nip\": 48213579",
    ],
)
def test_awkward_forms_in_free_text(text: str) -> None:
    out = Redactor().text(text)
    for value in ("GODE", "561231", "HDFRRN", "jose.nunez", "1234 9876", "2349876", "4821", "48213579"):
        assert value.lower() not in out.lower(), (value, out)


@pytest.mark.parametrize("text,secret", list(CREDENTIALS.items()))
def test_whole_credential_values_are_scrubbed(text: str, secret: str) -> None:
    out = Redactor().text(text)
    assert secret not in out and REDACTED in out, out
    if text.startswith("Authorization"):
        assert out == "Authorization: " + REDACTED


@pytest.mark.parametrize(
    "key",
    ["rfc", "rfc_pm", "RFCPF", "curp", "tel", "telefono", "celular", "phone_number", "phoneNumber", "correo",
     "email_contacto", "nombre", "apellido_paterno", "domicilio", "calle", "colonia", "cp", "codigo_postal",
     "fecha_nacimiento", "birthDate", "name", "first_name", "lastName", "address_2", "nip", "x-api-key",
     "xApiKeyCallback", "access_token", "Authorization", "dirección"],
)  # fmt: skip
def test_sensitive_keys_match_by_word_in_both_languages(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    ["execution_id", "job_id", "func_name", "worker_name", "queue", "status", "type_error", "error_class",
     "reason", "cancelled", "operation", "retry_after", "elapsed_ms", "command_id", "attempts", "event"],
)  # fmt: skip
def test_operational_keys_are_kept(key: str) -> None:
    assert not is_sensitive_key(key)


def test_ids_timestamps_ports_and_pids_survive() -> None:
    text = (
        "worker w1 pid 1234567 redis://127.0.0.1:6380/0 job 657118e1d511b6e54fe2a969 at 2026-12-01T22:00:00Z"
    )
    assert Redactor().text(text) == text
    assert Redactor().value({"attempts": 3, "status": 400, "elapsed_ms": 12.5}) == {
        "attempts": 3, "status": 400, "elapsed_ms": 12.5,
    }  # fmt: skip


# --- exceptions: tracebacks and chains carry codes, never the text an exception echoes ---------------


def _kiban_400() -> KibanValidationError:
    body = ErrorBody(
        type_error="VALIDATION_ERROR",
        message="email jose.nunez@example.com is not valid for José María",
        fields={"email": FieldError("email", ("FORMAT_ERROR",), "jose.nunez@example.com is not an e-mail")},
    )
    return KibanValidationError(
        "Kiban executeWorkflooForm answered 400: VALIDATION_ERROR; jose.nunez@example.com José María",
        operation="executeWorkflooForm", status_code=400, body=body,
    )  # fmt: skip


def _chained() -> tuple[type[BaseException], BaseException, object]:
    try:
        try:
            try:
                raise ValueError(f"bad form {CANARY_FORM!r}")
            except ValueError:
                raise _kiban_400() from None
        except KibanValidationError as exc:
            raise JobFailedError("permanent: " + error_reason(exc)) from exc
    except JobFailedError as exc:
        return type(exc), exc, exc.__traceback__


def test_reasons_are_codes_only() -> None:
    reason = error_reason(_kiban_400())
    assert reason == (
        "KibanValidationError: executeWorkflooForm: http 400: VALIDATION_ERROR: fields email(FORMAT_ERROR)"
    )
    kompliant = KompliantBadRequestError(
        "subject José María <jose.nunez@example.com> invalid", method="subject.create", status_code=400,
        code="BAD_REQUEST", sub_code="INVALID_PARAMETER",
    )  # fmt: skip
    assert error_reason(kompliant) == (
        "KompliantBadRequestError: subject.create: http 400: BAD_REQUEST/INVALID_PARAMETER"
    )
    assert error_reason(ValueError(f"bad {CANARY_FORM}")) == "ValueError"
    assert error_reason(TransientError("lock busy")) == "TransientError: lock busy"


def test_safe_traceback_keeps_frames_and_drops_echoed_text() -> None:
    text = safe_traceback(_chained())  # type: ignore[arg-type]
    assert not _seen(text), text
    assert "not valid" not in text and "is not an e-mail" not in text
    assert "_chained" in text and "test_log.py" in text  # the frames are there
    assert "The above exception was the direct cause" in text
    assert text.rstrip().endswith(
        "JobFailedError: permanent: KibanValidationError: executeWorkflooForm: http 400: VALIDATION_ERROR: "
        "fields email(FORMAT_ERROR)"
    )
    assert "ValueError" not in text  # suppressed with ``from None``, as Python prints it


def test_logged_exceptions_of_every_origin_are_safe(json_logs: pytest.CaptureFixture[str]) -> None:
    exc_info = _chained()
    get_logger("test").error("job_failed", exc_info=exc_info)
    get_logger("test").exception("job_failed_exc_true", exc_info=exc_info[1])
    logging.getLogger("rq.worker").error("Worker w: job failed %s", CANARY_FORM, exc_info=exc_info)  # type: ignore[arg-type]
    try:
        raise ValueError(f"pydantic says input_value={CANARY_FORM!r}")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    err = json_logs.readouterr().err
    assert not _seen(err), _seen(err)
    records = [json.loads(line) for line in err.strip().splitlines()]
    assert len(records) == 4 and all("exception" in r for r in records)
    assert records[-1]["exception"].endswith("\nValueError")  # the type; its text echoed the input
