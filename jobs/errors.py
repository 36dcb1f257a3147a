"""One exception tree for every job; the middleware turns each kind into retry or no retry."""

from __future__ import annotations


class StudioError(Exception):
    """Base class of every error this project raises on purpose."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)

    @property
    def message(self) -> str:
        """The message meant for whoever has to act on it."""
        return str(self.args[0])


class PermanentError(StudioError):
    """The job cannot succeed as it stands (bad input, not found, revoked credentials): no retry."""


class TransientError(StudioError):
    """A passing failure (network, 5xx, timeout): retried with exponential backoff."""


class RateLimited(TransientError):
    """The other side asked us to wait: retried after exactly retry_after_s seconds."""

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        if retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        super().__init__(message or f"rate limited; retrying after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s
