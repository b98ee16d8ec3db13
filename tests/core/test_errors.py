from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from workers.core.errors import VendorError, parse_retry_after

NOW = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), (" 3 ", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0)],
)
def test_retry_after_in_seconds(header: str, expected: float) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_as_http_date() -> None:
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=NOW) == 90.0


def test_retry_after_date_in_the_past_means_now() -> None:
    header = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    assert parse_retry_after(header, now=NOW) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "nan", "Mon, 99 Foo 2026"])
def test_retry_after_unreadable_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_vendor_error_carries_classification() -> None:
    error = VendorError("boom", retryable=True, retry_after=2.0, status_code=503)
    assert (error.retryable, error.retry_after, error.status_code) == (True, 2.0, 503)
    assert "503" in repr(error)
    plain = VendorError("no")
    assert (plain.retryable, plain.retry_after, plain.status_code) == (False, None, None)
