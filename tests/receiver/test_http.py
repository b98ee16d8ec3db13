"""The key check over real HTTP: one key header per request."""

from __future__ import annotations

from tests.receiver.conftest import KEY, NIP_PATH, ReceiverClient

NIP = {"event": "SENT", "date": "2026-11-22T23:00:00Z", "linkId": None}


def test_more_than_one_key_header_is_400(receiver: ReceiverClient) -> None:
    """Each header used to be tried: 1,500 guesses cost one request (now past the 32 KiB header cap
    too); 500 fit under the cap and still get one try, not 500."""
    guesses = [("x-api-key", f"guess-{n:04d}") for n in range(500)]
    flood = receiver.post(NIP_PATH, json=NIP, headers=[*guesses, ("x-api-key", KEY)])
    assert flood.status_code == 400 and flood.json()["error"] == "bad_request"
    assert flood.headers["connection"] == "close"
    # Two different header names count too (x-api-key and xApiKeyCallback are both callback headers).
    both = receiver.post(NIP_PATH, json=NIP, headers=[("x-api-key", KEY), ("xApiKeyCallback", KEY)])
    assert both.status_code == 400
    assert receiver.post(NIP_PATH, json=NIP, headers={"xApiKeyCallback": KEY}).status_code == 200
