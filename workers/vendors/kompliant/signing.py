"""KSig1-HMAC-SHA256 request signing ("Kompliant Signature Version 1", docs/vendor-assumptions.md §2.2).

Confirmed: signature = Base64(HMAC-SHA256(Base64Decode(secret), UTF-8(string_to_sign))) and, in the
minimum case, string_to_sign is the API key alone (the published vector reproduces). Everything about
more than one element is assumption P1: the values are joined with "\\n" in the order listed in
``X-API-Signed-Elements`` (``;``-separated); that header is sent only when more than ``API-Key`` is signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping, Sequence

SCHEME = "KSig1-HMAC-SHA256"
API_KEY = "API-Key"
HTTP_VERB = "HTTP-Verb"
TIMESTAMP = "Timestamp"
NONCE = "Nonce"
CONTENT_MD5 = "Content-MD5"
SUPPORTED_ELEMENTS = (API_KEY, HTTP_VERB, TIMESTAMP, NONCE, CONTENT_MD5)

# Data element -> header that carries its value (HTTP-Verb has none: it is the request method).
ELEMENT_HEADERS = {
    API_KEY: "X-API-Key",
    TIMESTAMP: "X-API-Timestamp",
    NONCE: "X-API-Nonce",
    CONTENT_MD5: "X-API-Content-Hash",
}
SIGNED_ELEMENTS_HEADER = "X-API-Signed-Elements"
AUTH_TOKEN_HEADER = "X-API-Auth-Token"  # noqa: S105 - a header name


def parse_elements(spec: str | Sequence[str]) -> list[str]:
    """``"API-Key;HTTP-Verb"`` (or a list) -> validated element names; API-Key always comes first."""
    items = [e.strip() for e in (spec.split(";") if isinstance(spec, str) else spec) if e.strip()]
    if not items or items[0] != API_KEY:
        raise ValueError("KSig1 signed elements must start with API-Key")
    unknown = [e for e in items if e not in SUPPORTED_ELEMENTS]
    if unknown:
        raise ValueError(f"unsupported KSig1 elements: {', '.join(unknown)}")
    if len(set(items)) != len(items):
        raise ValueError("KSig1 signed elements repeat")
    return items


def string_to_sign(elements: Sequence[str], values: Mapping[str, str]) -> str:
    return "\n".join(values[e].strip() for e in elements)


def signature(secret_key_b64: str, message: str) -> str:
    key = base64.b64decode(secret_key_b64, validate=True)
    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def content_md5(body: bytes) -> str:
    """Base64(MD5(body)), RFC 1864 style (assumption P1)."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")


def element_values(
    elements: Sequence[str], *, api_key: str, method: str, body: bytes, timestamp: str, nonce: str
) -> dict[str, str]:
    values = {API_KEY: api_key}
    if HTTP_VERB in elements:
        values[HTTP_VERB] = method.upper()
    if TIMESTAMP in elements:
        values[TIMESTAMP] = timestamp
    if NONCE in elements:
        values[NONCE] = nonce
    if CONTENT_MD5 in elements:
        values[CONTENT_MD5] = content_md5(body)
    return values


class KSig1Signer:
    """Builds the auth headers for one request."""

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        auth_token: str,
        *,
        signed_elements: str | Sequence[str] = API_KEY,
        clock: Callable[[], float] = time.time,
        nonce_factory: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        try:  # fail at start-up, not on the first call
            base64.b64decode(secret_key, validate=True)
        except ValueError:
            raise ValueError("Kompliant secret key is not valid Base64") from None
        self.api_key = api_key
        self._secret = secret_key
        self._auth_token = auth_token
        self.elements = parse_elements(signed_elements)
        self._clock = clock
        self._nonce = nonce_factory

    def headers(self, method: str, body: bytes) -> dict[str, str]:
        values = element_values(
            self.elements,
            api_key=self.api_key,
            method=method,
            body=body,
            timestamp=str(int(self._clock())),
            nonce=self._nonce(),
        )
        headers = {
            "Authorization": f"{SCHEME} {signature(self._secret, string_to_sign(self.elements, values))}",
            "X-API-Key": self.api_key,
            AUTH_TOKEN_HEADER: self._auth_token,
        }
        if self.elements != [API_KEY]:
            headers[SIGNED_ELEMENTS_HEADER] = ";".join(self.elements)
            for element in self.elements:
                header = ELEMENT_HEADERS.get(element)
                if header and element != API_KEY:
                    headers[header] = values[element]
        return headers


def verify(
    headers: Mapping[str, str], method: str, body: bytes, *, api_key: str, secret_key: str, auth_token: str
) -> str | None:
    """Server side (the fake): None if the request is signed right, else the reason it is not."""
    if not hmac.compare_digest(headers.get("x-api-key", ""), api_key):
        return "X-API-Key is missing or unknown"
    if not hmac.compare_digest(headers.get("x-api-auth-token", ""), auth_token):
        return "X-API-Auth-Token is missing or wrong"
    authorization = headers.get("authorization", "")
    scheme, _, given = authorization.partition(" ")
    if scheme != SCHEME or not given:
        return f"Authorization must be '{SCHEME} <signature>'"
    try:
        elements = parse_elements(headers.get(SIGNED_ELEMENTS_HEADER.lower(), API_KEY))
    except ValueError as exc:
        return str(exc)
    values = {API_KEY: headers.get("x-api-key", "")}
    if HTTP_VERB in elements:
        values[HTTP_VERB] = method.upper()
    for element in (TIMESTAMP, NONCE):
        if element in elements:
            value = headers.get(ELEMENT_HEADERS[element].lower())
            if not value:
                return f"{ELEMENT_HEADERS[element]} is required when {element} is signed"
            values[element] = value
    if CONTENT_MD5 in elements:
        actual = content_md5(body)
        if headers.get(ELEMENT_HEADERS[CONTENT_MD5].lower()) != actual:
            return "X-API-Content-Hash does not match the body"
        values[CONTENT_MD5] = actual
    expected = signature(secret_key, string_to_sign(elements, values))
    if not hmac.compare_digest(given, expected):
        return "signature does not match"
    return None
