"""Logging of the long-running processes (the command line's ``serve``, ``scheduler``
and ``dev``, and the deploy recipes' servers): ``--log-level`` and ``--log-format``, one
handler on stderr, as text for a terminal or as one JSON object per line for a log
collector."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Sequence

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


def add_arguments(parser: argparse.ArgumentParser, *, default_level: str) -> None:
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=default_level,
        help="dispatchlet's own messages at this level and above; other libraries' from "
        "warning up, unless debug (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text, or json: one object per line with time, level, logger, message and "
        "the message's fields (default: %(default)s)",
    )


_json_handler: logging.Handler | None = None


def configure(args: argparse.Namespace, *, also: Sequence[str] = ()) -> None:
    """Log to stderr as ``args.log_level`` and ``args.log_format`` say; the loggers named
    in ``also`` (a server the process runs: waitress) speak at dispatchlet's level."""
    configure_logging(args.log_level, args.log_format, also=also)


def configure_logging(level: str, log_format: str, *, also: Sequence[str] = ()) -> None:
    global _json_handler
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        _json_handler = handler
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT))
        _json_handler = None
    number = logging.getLevelName(level.upper())
    # Other libraries (waitress, aiohttp) speak from warning up unless asked for debug.
    logging.basicConfig(
        level=number if number == logging.DEBUG else max(number, logging.WARNING),
        handlers=[handler],
        force=True,
    )
    for name in ("dispatchlet", *also):
        logging.getLogger(name).setLevel(number)


def json_format() -> bool:
    return _json_handler is not None


def notice(text: str, **fields: object) -> None:
    """A message of the command itself on stderr (stopping, stopped, a failed reload),
    whatever the log level: as is, or as a JSON object when the log format is json, so
    that stderr stays one object per line."""
    handler = _json_handler
    if handler is None:
        print(text, file=sys.stderr, flush=True)
        return
    record = logging.LogRecord("dispatchlet.cli", logging.INFO, "", 0, text, None, None)
    record.__dict__.update(fields)
    handler.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    record's ``extra`` fields, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
