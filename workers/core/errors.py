"""Base exception for every vendor call (``Retry-After`` is parsed in ``workers.vendors.http``).

Clients never retry: they classify the failure and raise. The job layer retries only when
``retryable`` is true, waiting at least ``retry_after`` seconds when the vendor said so.
"""

from __future__ import annotations


class VendorError(Exception):
    """A failed vendor call. ``status_code`` is None for transport failures (timeouts, resets)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code}, "
            f"retryable={self.retryable}, retry_after={self.retry_after})"
        )
