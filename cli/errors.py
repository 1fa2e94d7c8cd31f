"""Exit statuses of the command-line tool and the error that carries one."""

from __future__ import annotations

from ..core.errors import DispatchletError

EXIT_OK = 0
EXIT_FAILED = 1  # the function ran and did not succeed
EXIT_ERROR = 2  # the command could not do its job: usage, configuration, network, HTTP
EXIT_INTERRUPTED = 130  # Ctrl+C (128 + SIGINT), as shells report it
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (128 + SIGPIPE), as shells report it


class CommandError(DispatchletError):
    """A failure reported as one line on stderr, ending the command with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code
