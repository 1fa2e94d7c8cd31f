"""Exit statuses of the command-line tool and the error that carries one."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the function ran and did not succeed
EXIT_ERROR = 2  # the command could not do its job: usage, configuration, network, HTTP


class CommandError(Exception):
    """A failure reported as one line on stderr, ending the command with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code
