"""KSig1-HMAC-SHA256: the published minimum-case vector, and the assumed multi-element scheme (P1)."""

import base64
import hashlib
import hmac

import pytest

from workers.vendors.kompliant.signing import (
    KSig1Signer,
    content_md5,
    parse_elements,
    signature,
    string_to_sign,
    verify,
)

API_KEY = "sb_3eY9UJuj09636NVPlgmhfa"
SECRET = "xBeain5pFnPyQkl98qzA+BG+Cjzskpqq9fGKDbDoXNP5"
VECTOR_HEX = "896121e238caf707e34d777fdc6cc898f2cbd6cc1366208fa436e3eb6bc5a364"
VECTOR_HEADER = "KSig1-HMAC-SHA256 iWEh4jjK9wfjTXd/3GzImPLL1swTZiCPpDbj62vFo2Q="


def test_published_vector_byte_for_byte() -> None:
    headers = KSig1Signer(API_KEY, SECRET, "token").headers("POST", b'{"any":"body"}')
    assert headers["Authorization"] == VECTOR_HEADER
    assert headers["Authorization"].encode() == VECTOR_HEADER.encode()
    raw = base64.b64decode(headers["Authorization"].split(" ", 1)[1])
    assert raw.hex() == VECTOR_HEX
    assert headers["X-API-Key"] == API_KEY and headers["X-API-Auth-Token"] == "token"
    assert "X-API-Signed-Elements" not in headers  # minimum case: API key only (P1)


def test_signature_function_matches_the_vector() -> None:
    assert signature(SECRET, API_KEY) == VECTOR_HEADER.split(" ", 1)[1]


def test_multi_element_string_joins_values_with_newlines_in_header_order() -> None:
    signer = KSig1Signer(
        API_KEY,
        SECRET,
        "token",
        signed_elements="API-Key;HTTP-Verb;Timestamp;Nonce;Content-MD5",
        clock=lambda: 1724710669.9,
        nonce_factory=lambda: "00112233445566778899aabbccddeeff",
    )
    body = b'{"workflow_id":"w_1"}'
    headers = signer.headers("post", body)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - the documented digest
    expected_string = "\n".join([API_KEY, "POST", "1724710669", "00112233445566778899aabbccddeeff", md5])
    digest = hmac.new(base64.b64decode(SECRET), expected_string.encode(), hashlib.sha256).digest()
    assert headers["Authorization"] == "KSig1-HMAC-SHA256 " + base64.b64encode(digest).decode()
    assert headers["X-API-Signed-Elements"] == "API-Key;HTTP-Verb;Timestamp;Nonce;Content-MD5"
    assert headers["X-API-Timestamp"] == "1724710669"
    assert headers["X-API-Nonce"] == "00112233445566778899aabbccddeeff"
    assert headers["X-API-Content-Hash"] == md5 == content_md5(body)


def test_verify_accepts_good_and_names_what_is_wrong() -> None:
    signer = KSig1Signer(API_KEY, SECRET, "token", signed_elements="API-Key;HTTP-Verb;Content-MD5")
    body = b"{}"
    headers = {k.lower(): v for k, v in signer.headers("POST", body).items()}
    kwargs = {"api_key": API_KEY, "secret_key": SECRET, "auth_token": "token"}
    assert verify(headers, "POST", body, **kwargs) is None
    assert verify(headers, "POST", b'{"x":1}', **kwargs) == "X-API-Content-Hash does not match the body"
    assert verify(headers, "GET", body, **kwargs) == "signature does not match"
    assert verify({**headers, "x-api-auth-token": "no"}, "POST", body, **kwargs) is not None
    assert verify({k: v for k, v in headers.items() if k != "authorization"}, "POST", body, **kwargs)


@pytest.mark.parametrize("spec", ["", "HTTP-Verb;API-Key", "API-Key;URL-Path", "API-Key;API-Key"])
def test_bad_element_lists_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_elements(spec)


def test_bad_secret_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="Base64"):
        KSig1Signer(API_KEY, "not base64!", "token")


def test_values_are_trimmed() -> None:
    assert string_to_sign(["API-Key"], {"API-Key": f"  {API_KEY} "}) == API_KEY
