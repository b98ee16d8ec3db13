import pytest

from workers.core import errors
from workers.core.errors import VendorError


def test_vendor_error_carries_classification() -> None:
    error = VendorError("boom", retryable=True, retry_after=2.0, status_code=503)
    assert (error.retryable, error.retry_after, error.status_code) == (True, 2.0, 503)
    assert "503" in repr(error)
    plain = VendorError("no")
    assert (plain.retryable, plain.retry_after, plain.status_code) == (False, None, None)


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_the_docstring_draws_the_whole_tree() -> None:
    drawn = errors.__doc__ or ""
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == {errors.BridgeError, *_subclasses(errors.BridgeError)}
    for cls in defined:
        assert f"+ {cls.__name__}" in drawn or cls is errors.BridgeError, cls.__name__
        assert cls.__name__.endswith("Error"), cls.__name__


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (errors.TransientError("later"), True),
        (errors.IntakeUnavailableError("Redis is slow"), True),
        (errors.KibanRetryableError("503"), True),
        (errors.KompliantRetryableError("503"), True),
        (errors.PermanentError("never"), False),
        (errors.SettingsError("invalid setting X"), False),
        (errors.JobFailedError("permanent: x"), False),
        (errors.KibanNipAlreadySentError("sent"), False),
        (errors.KompliantRuleViolationError("rule"), False),
    ],
)
def test_every_error_says_whether_to_retry(error: errors.BridgeError, retryable: bool) -> None:
    assert isinstance(error, errors.BridgeError)
    assert error.retryable is retryable
    assert error.retry_after is None


def test_retry_after_and_status_travel_with_the_error() -> None:
    transient = errors.TransientError("lock busy", retry_after=3.0)
    assert (transient.retryable, transient.retry_after) == (True, 3.0)
    kiban = errors.KibanRetryableError("429", retry_after=7.0, status_code=429, operation="getStatus")
    assert (kiban.retry_after, kiban.status_code, kiban.operation) == (7.0, 429, "getStatus")
    assert isinstance(errors.KibanNipAlreadySentError("x"), errors.KibanConflictError)


def test_settings_error_is_an_ordinary_exception() -> None:
    error = errors.SettingsError("invalid setting REDIS_URL: bad scheme")
    assert not isinstance(error, SystemExit)
    assert str(error) == "invalid setting REDIS_URL: bad scheme"


def test_redis_url_error_is_still_a_value_error() -> None:
    assert isinstance(errors.RedisUrlError("REDIS_URL is not set"), ValueError)
