"""Retry policy: full-jitter exponential backoff with a cap, Retry-After as a floor, attempt budget."""

from __future__ import annotations

from workers.retry import PermanentError, RetryPolicy, TransientError, is_retryable, reason_of


def policy(**overrides: float) -> RetryPolicy:
    values = {"base": 1.0, "cap": 30.0, "max_attempts": 4, "retry_after_max": 120.0, **overrides}
    return RetryPolicy(
        base=values["base"],
        cap=values["cap"],
        max_attempts=int(values["max_attempts"]),
        retry_after_max=values["retry_after_max"],
    )


def test_ceiling_doubles_per_attempt_and_is_capped() -> None:
    p = policy()
    top = [p.delay(n, rng=lambda: 1.0) for n in range(8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_full_jitter_spans_zero_to_ceiling() -> None:
    p = policy()
    assert p.delay(3, rng=lambda: 0.0) == 0.0
    assert p.delay(3, rng=lambda: 0.5) == 4.0


def test_retry_after_is_a_floor_and_is_clipped() -> None:
    p = policy()
    assert p.delay(0, retry_after=7.5, rng=lambda: 0.1) == 7.5
    assert p.delay(0, retry_after=10_000, rng=lambda: 0.1) == 120.0
    assert p.delay(5, retry_after=1.0, rng=lambda: 1.0) == 30.0


def test_attempt_budget_counts_the_first_run() -> None:
    p = policy(max_attempts=3)
    assert [p.can_retry(n) for n in range(4)] == [True, True, False, False]


def test_only_flagged_errors_retry() -> None:
    class Flagged(Exception):
        retryable = True

    assert is_retryable(TransientError("later"))
    assert is_retryable(Flagged())
    assert not is_retryable(PermanentError("never"))
    assert not is_retryable(ValueError("bug"))


def test_reason_is_redacted() -> None:
    class VendorLike(Exception):
        status_code = 400
        code = "ACCOUNT_CONFIGURATION_VIOLATION"
        sub_code = "DUPLICATE_EMAIL"

    reason = reason_of(VendorLike("email ana@example.com already used"))
    assert "ana@example.com" not in reason
    assert "http 400" in reason and "ACCOUNT_CONFIGURATION_VIOLATION/DUPLICATE_EMAIL" in reason
