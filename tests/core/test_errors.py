from workers.core.errors import VendorError


def test_vendor_error_carries_classification() -> None:
    error = VendorError("boom", retryable=True, retry_after=2.0, status_code=503)
    assert (error.retryable, error.retry_after, error.status_code) == (True, 2.0, 503)
    assert "503" in repr(error)
    plain = VendorError("no")
    assert (plain.retryable, plain.retry_after, plain.status_code) == (False, None, None)
