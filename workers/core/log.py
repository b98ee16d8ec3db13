"""Structured JSON logging for every process, with a redaction step for secrets and PII.

Redaction is a structlog processor (a small callable over the event dict) and also a ``logging.Filter``
so records from libraries (uvicorn, rq, httpx) are scrubbed the same way before they are written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"

# Keys whose values are always secret or personal, compared after lower-casing and dropping "-" and "_".
SENSITIVE_KEYS = frozenset(
    {
        "nip",
        "otp",
        "token",
        "apikey",
        "xapikey",
        "xapikeycallback",
        "callbackxapikey",
        "xapiauthtoken",
        "authtoken",
        "secret",
        "secretkey",
        "password",
        "authorization",
        "cookie",
        "rfc",
        "rfcpf",
        "rfcpm",
        "curp",
        "phone",
        "phonenumber",
        "countrycode",
        "email",
        "mail",
        "webhooksecret",
    }
)

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Mexican RFC: 3 (company) or 4 (person) letters, 6-digit date, 3-character homoclave.
_RFC = re.compile(r"\b[A-ZÑ&]{3,4}\d{6}[A-Z0-9]{3}\b", re.IGNORECASE)
# Phone numbers: 10 or more digits, optionally with +, spaces, dashes or parentheses between them.
_PHONE = re.compile(r"(?<![\w-])\+?\d[\d\s().-]{8,}\d(?![\w-])")
# A NIP is 6 digits; redact any stand-alone 6-digit run (dates and ids are longer or joined).
_NIP = re.compile(r"(?<![\w.:-])\d{6}(?![\w.:-])")
_KEY_VALUE = re.compile(
    r"(?i)\b(nip|api[-_]?key|x-api-key|xApiKeyCallback|token|secret|password|authorization)"
    r"(\s*[=:]\s*\"?)([^\s\",;&]+)"
)


def _normalise(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


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
        value = _KEY_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, value)
        value = _EMAIL.sub(REDACTED, value)
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
                k: (
                    REDACTED
                    if isinstance(k, str) and _normalise(k) in SENSITIVE_KEYS
                    else self.value(v, depth + 1)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set):
            return [self.value(v, depth + 1) for v in value]
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor."""
        for key in list(event_dict):
            if _normalise(key) in SENSITIVE_KEYS:
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self.value(event_dict[key])
        return event_dict


redactor = Redactor()


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
        structlog.processors.format_exc_info,
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
