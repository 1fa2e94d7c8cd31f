"""SIGINT and SIGTERM for the long-running commands (``serve``, ``scheduler``, ``dev``).

Each installs its own handlers, whatever it inherited: a process started as a shell's
background job, or by any parent that ignores SIGINT, keeps SIGINT ignored (Python leaves
an inherited SIG_IGN alone), and the kernel drops every signal for which PID 1 of a
container has no handler. The first signal stops the command gracefully; a second one
ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import NoReturn

from .errors import EXIT_INTERRUPTED

EXIT_TERMINATED = 0
"""After SIGTERM: the stop a service manager (systemd, docker stop) asks for, a normal end."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

EPILOG = """\
exit status:
  0    stopped by SIGTERM (systemd, docker stop: a normal end)
  130  stopped by Ctrl+C (SIGINT)
  2    could not start: bad arguments, configuration, port in use

The first SIGINT or SIGTERM stops it gracefully, a second one at once. It handles both
itself, so it stops also when its parent ignores SIGINT (a shell's background job) and
as PID 1 of a container.
"""


def exit_status(signum: int) -> int:
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED


class Stop:
    """Which stop signal came first, and how many came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        """The command's exit status once stopped by the signal (0 when none came)."""
        return 0 if self.signum is None else exit_status(self.signum)

    def received(self, signum: int) -> bool:
        """Count ``signum``; True when it is the first."""
        self.count += 1
        if self.signum is None:
            self.signum = signum
            return True
        return False


def exit_now(status: int) -> NoReturn:
    """End the process at once: output flushed, no cleanup that could wait on a thread
    (a function still running, an attempt in flight). Calls in flight keep their leases,
    which lapse: the scheduler runs them again (at least once)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


@contextmanager
def interrupting_main_thread() -> Iterator[Stop]:
    """For a command that blocks in its main thread (``serve``): the first SIGINT or SIGTERM
    raises KeyboardInterrupt there; a second one ends the process at once."""
    stop = Stop()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.received(signum):
            raise KeyboardInterrupt
        exit_now(stop.exit_status)

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def stopping_loop(
    loop: asyncio.AbstractEventLoop,
    first: Callable[[int], None],
    again: Callable[[Stop], None] | None = None,
) -> Iterator[Stop]:
    """For an asyncio command: the first SIGINT or SIGTERM calls ``first(signum)``; a
    second one calls ``again(stop)``, by default ending the process at once."""
    stop = Stop()

    def handle(signum: int) -> None:
        if stop.received(signum):
            first(signum)
        elif again is not None:
            again(stop)
        else:
            exit_now(stop.exit_status)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handle, signum)
    try:
        yield stop
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
