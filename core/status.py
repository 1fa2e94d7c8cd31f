"""The run status of dispatch.sdk.v1, as a Python enum."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Outcome of a run; values are those of the ``dispatch.sdk.v1.Status`` enum."""

    UNSPECIFIED = 0
    OK = 1
    TIMEOUT = 2
    THROTTLED = 3
    INVALID_ARGUMENT = 4
    INVALID_RESPONSE = 5
    TEMPORARY_ERROR = 6
    PERMANENT_ERROR = 7
    INCOMPATIBLE_STATE = 8
    DNS_ERROR = 9
    TCP_ERROR = 10
    TLS_ERROR = 11
    HTTP_ERROR = 12
    UNAUTHENTICATED = 13
    PERMISSION_DENIED = 14
    NOT_FOUND = 15

    @property
    def retryable(self) -> bool:
        """Whether a scheduler retries a run that ended with this status."""
        return self in _RETRYABLE

    @classmethod
    def answered(cls, value: int) -> Status:
        """What a RunResponse's status number means to its caller: a number this
        protocol does not know is an invalid response."""
        try:
            return cls(value)
        except ValueError:
            return cls.INVALID_RESPONSE


_RETRYABLE = frozenset(
    {
        Status.TIMEOUT,
        Status.THROTTLED,
        Status.TEMPORARY_ERROR,
        Status.INCOMPATIBLE_STATE,
        Status.DNS_ERROR,
        Status.TCP_ERROR,
        Status.TLS_ERROR,
        Status.HTTP_ERROR,
    }
)
