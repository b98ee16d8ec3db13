"""Structured JSON logging for every process, with a redaction step for secrets and PII.

Redaction is a structlog processor (a small callable over the event dict) and also a ``logging.Filter``
so records from libraries (uvicorn, rq, httpx) are scrubbed the same way before they are written.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import redis
import structlog

from workers.core import errors

REDACTED = "[REDACTED]"

# Keys whose values are always secret or personal. A key is split into words (``_``, ``-``, spaces and
# camelCase) and compared in lower case: sensitive when the whole key is in ``SENSITIVE_KEYS``, a word
# starts with one of ``SENSITIVE_WORD_PREFIXES``, or the words run together contain one of
# ``SENSITIVE_JOINED``. Spanish and English, because Kiban's forms use both.
SENSITIVE_KEYS = frozenset(
    {"name", "cp", "nip", "otp", "pin", "token", "secret", "password", "cookie", "mail", "key", "dob"}
)
SENSITIVE_WORD_PREFIXES = (
    "rfc", "curp", "tel", "cel", "phone", "movil", "correo", "email", "mail", "nombre", "apellido",
    "domicilio", "direcc", "calle", "colonia", "municipio", "birth", "address", "street", "nip",
    "otp", "passw", "secret", "token", "authoriz", "cookie", "signature", "credential",
)  # fmt: skip
SENSITIVE_JOINED = (
    "firstname", "lastname", "middlename", "fullname", "surname", "givenname", "codigopostal",
    "postalcode", "zipcode", "fechanac", "dateofbirth", "apikey", "accesskey", "countrycode",
    "numexterior", "numinterior", "ksig",
)  # fmt: skip

_WORDS = re.compile(r"[A-ZÀ-Þ]+(?![a-zß-ÿ])|[A-ZÀ-Þ]?[a-zß-ÿ]+|\d+")


def _normalise(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def is_sensitive_key(key: str) -> bool:
    """True when values under ``key`` are personal data or a credential (see ``SENSITIVE_KEYS``)."""
    if _normalise(key) in SENSITIVE_KEYS:
        return True
    words = [w.lower() for w in _WORDS.findall(key)]
    if any(w.startswith(SENSITIVE_WORD_PREFIXES) for w in words):
        return True
    joined = "".join(words)
    return any(part in joined for part in SENSITIVE_JOINED)


_AT = r"(?:@|%40|%2540)"
_EMAIL = re.compile(rf"[\w.+%-]+{_AT}[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
# Mexican CURP: 4 letters, 6-digit date, sex, state (2), 3 consonants, homoclave and check digit.
_CURP = re.compile(r"\b[A-Z]{4}[-\s]?\d{6}[-\s]?[HMX][A-Z]{5}[A-Z0-9]\d\b", re.IGNORECASE)
# Mexican RFC: 3 (company) or 4 (person) letters, 6-digit date, 3-character homoclave, with or without
# a dash or space between the parts.
_RFC = re.compile(r"\b[A-ZÑ&]{3,4}[-\s]?\d{6}[-\s]?[A-Z0-9]{3}\b", re.IGNORECASE)
# Phone numbers: 10 or more digits, optionally with + (or %2B), spaces, dashes or parentheses between them.
_PHONE = re.compile(r"(?:%2B|(?<![\w-])\+?)\d[\d\s().-]{8,}\d(?![\w-])", re.IGNORECASE)
# A sandbox-style NIP is 6 digits; redact any stand-alone 6-digit run (dates and ids are longer or
# joined). NIPs of 4 to 8 digits are caught by their key (``nip=1234``, ``"nip": 12345678``).
_NIP = re.compile(r"(?<![\w.:-])\d{6}(?![\w.:-])")
# Credentials whatever key carries them: bearer tokens, KSig1 signatures, ``access_token=`` in URLs.
_SCHEMES = re.compile(
    r"(?i)\b(Bearer|Basic|Token|KSig1-HMAC-SHA256)(\s+)([^\s\"',;]+(?:\s*,\s*[\w-]+=[^\s\"',;]+)*)"
)
# ``key=value``, ``key: value``, ``"key": "value"``, ``'key': 'value'``: the value goes when the key is
# sensitive. A quoted value ends at its quote; an unquoted one at white space or punctuation, except an
# ``Authorization`` header's, which runs to the end of the line.
_KEY_VALUE = re.compile(
    r"""(?P<key>[A-Za-z][\w-]*)(?P<sep>['"]?\s*[=:]\s*)"""
    r"""(?P<value>\[REDACTED\]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s"',;&?(){}\[\]]+)"""
)
_AUTH_HEADER = re.compile(
    r"(?im)\b(authorization|x-api-key|x-api-auth-token)(['\"]?\s*:\s*)([^\s'\"][^\r\n'\"]*)"
)


def _key_value(match: re.Match[str]) -> str:
    if match.group("value") == REDACTED or not is_sensitive_key(match.group("key")):
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{match.group('sep')}{quote}{REDACTED}{quote}"


class Redactor:
    """Scrubs known secrets, sensitive keys and PII patterns from any value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
        # Longest first so a secret that contains another is replaced whole.
        self._secrets = sorted(merged, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        value = _AUTH_HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, value)
        value = _SCHEMES.sub(lambda m: m.group(1) + m.group(2) + REDACTED, value)
        value = _KEY_VALUE.sub(_key_value, value)
        value = _EMAIL.sub(REDACTED, value)
        value = _CURP.sub(REDACTED, value)
        value = _RFC.sub(REDACTED, value)
        value = _PHONE.sub(REDACTED, value)
        return _NIP.sub(REDACTED, value)

    def value(self, value: Any, depth: int = 0) -> Any:
        if depth > 8:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                k: (REDACTED if isinstance(k, str) and is_sensitive_key(k) else self.value(v, depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set):
            if len(value) == 2 and isinstance(value, tuple):
                name = value[0]
                if isinstance(name, str | bytes) and is_sensitive_key(_text_of(name)):
                    return [self.value(name, depth + 1), REDACTED]  # a header pair
            return [self.value(v, depth + 1) for v in value]
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        if isinstance(value, BaseException):
            return describe_exception(value)
        if isinstance(value, int) and not isinstance(value, bool) and 10 <= len(str(abs(value))) <= 15:
            return REDACTED  # a phone number written as a number, like its string form above
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor."""
        for key in list(event_dict):
            if is_sensitive_key(key):
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self.value(event_dict[key])
        return event_dict


def _text_of(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


redactor = Redactor()


# --- exceptions ------------------------------------------------------------------------------------

# Exceptions whose text the bridge or the library writes from its own words, never from a caller's data;
# any other exception (``ValueError``, ``KeyError``, pydantic's ``ValidationError``, vendor errors, which
# carry the vendor's text) is logged by type only: its frames still show where it happened.
_OWN_TEXT: tuple[type[BaseException], ...] = (OSError, redis.RedisError, errors.BridgeError)


def error_reason(exc: BaseException) -> str:
    """A failure reason built from codes only: the exception type, the HTTP status, Kiban's operation,
    ``typeError`` and field ids with their codes, Kompliant's ``code``/``sub_code``. A vendor's free text
    (which may echo the input) is never part of it; the bridge's own exceptions keep their text."""
    parts = [type(exc).__name__]
    if isinstance(exc, errors.KibanError) and exc.operation:
        parts.append(exc.operation)
    if isinstance(exc, errors.KompliantError) and exc.method:
        parts.append(exc.method)
    if isinstance(exc, errors.VendorError):
        if exc.status_code:
            parts.append(f"http {exc.status_code}")
        elif exc.__cause__ is not None:
            parts.append(type(exc.__cause__).__name__)
    if isinstance(exc, errors.KibanError):
        if exc.type_error:
            parts.append(_code(exc.type_error))
        if exc.fields:
            parts.append(
                "fields "
                + " ".join(
                    _code(name) + (f"({','.join(_code(c) for c in f.codes)})" if f.codes else "")
                    for name, f in sorted(exc.fields.items())
                )
            )
    if isinstance(exc, errors.KompliantError) and exc.code:
        parts.append(_code(exc.code) + (f"/{_code(exc.sub_code)}" if exc.sub_code else ""))
    if isinstance(exc, _OWN_TEXT) and not isinstance(exc, errors.VendorError):
        message = str(exc).strip()
        if message:
            parts.append(message[:300])
    return redactor.text(": ".join(parts))


_CODE = re.compile(r"[^A-Za-z0-9_.-]")


def _code(value: object) -> str:
    """A vendor code as a token: anything but letters, digits, ``_.-`` dropped, at most 64 characters."""
    return _CODE.sub("", str(value))[:64] or "?"


def describe_exception(exc: BaseException) -> str:
    """``error_reason`` of ``exc`` and of every exception it was raised from or during, outermost last."""
    chain: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < 10:
        seen.add(id(current))
        chain.append(error_reason(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return " <- ".join(chain)


def safe_traceback(exc_info: tuple[Any, Any, Any]) -> str:
    """A traceback with its frames (file, line, function, source line) and each exception of the chain
    as ``error_reason`` renders it: the data an exception's text may echo is not in it."""
    _type, exc, _tb = exc_info
    if exc is None:
        return ""
    blocks: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(blocks) < 10:
        seen.add(id(current))
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        blocks.append(
            "Traceback (most recent call last):\n" + frames + error_reason(current) + "\n"
            if frames
            else error_reason(current) + "\n"
        )
        if current.__cause__ is not None:
            link = "\nThe above exception was the direct cause of the following exception:\n\n"
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            link = "\nDuring handling of the above exception, another exception occurred:\n\n"
            current = current.__context__
        else:
            current = None
        if current is not None:
            blocks.append(link)
    return redactor.text("".join(reversed(blocks)).rstrip("\n"))


def format_exc_info(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor in place of ``structlog.processors.format_exc_info``: ``exc_info`` becomes
    ``exception``, rendered by ``safe_traceback``."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        elif not isinstance(exc_info, tuple):
            exc_info = sys.exc_info()
        text = safe_traceback(exc_info)
        if text:
            event_dict["exception"] = text
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (test capture and reloaders swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class RedactingFilter(logging.Filter):
    """Applies the redactor to stdlib records (library logs) before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # from structlog: its own processor already redacted it
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not break logging
            message = str(record.msg)
        record.msg = redactor.text(message)
        record.args = None
        return True


def configure_logging(level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the stdlib root logger for one process; safe to call again."""
    redactor.add_secrets(secrets)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        format_exc_info,
        redactor,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker", "rq"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers[:] = []
        lib_logger.propagate = True
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
