"""Log lines as text or as one JSON object per line, the same on the device and the fleet.

``edgefleet --log-format json ...`` (or ``EDGEFLEET_LOG_FORMAT=json``; the flag wins) makes
every line a JSON object with ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
``msg`` (the formatted message), ``exc`` when there is a traceback, and the ids known
where the line was logged:

- ``request_id``: the fleet API's request id (`REQUEST_ID`, set for each request by
  `edgefleet.fleet.api.guard.RequestGuard`, the one echoed in ``X-Request-ID``);
- ``device_id``: `DEVICE_ID` where a request is a device's (the repository's signed
  requests), or the process's own on a device (`set_process_fields`, which the agent's
  ``run`` calls: a thread starts with an empty context, so a context variable set in
  ``main`` would not reach the agent's threads), or ``extra={"device_id": ...}`` on the
  call, which wins over both.

Any other ``extra=`` field whose name is in `EXTRA_FIELDS` is copied too; the rest of a
record's attributes are not, so a line carries no more than the code meant it to.
Invariant: formatting never raises for a value it cannot encode (it is written as its
``repr``), so a log call can never take a request or the agent down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
ENV_VAR = "EDGEFLEET_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("edgefleet_request_id", default=None)
DEVICE_ID: ContextVar[str | None] = ContextVar("edgefleet_device_id", default=None)
# ``extra=`` fields a JSON line carries when a call passes them (beside the two ids).
EXTRA_FIELDS = ("rollout_id", "model", "version", "topic", "seq")

# Fields of every line of this process (the agent's device id): process-wide on purpose,
# since threads do not inherit context variables.
_process_fields: dict[str, str] = {}
# What `configure` installed last: `console` writes in the same format.
_active: dict[str, LogFormat] = {"format": "text"}


class LogFormatError(ValueError):
    """A log format other than ``text`` or ``json``."""


def resolve_format(flag: str | None, environ: Mapping[str, str] = os.environ) -> LogFormat:
    """The format to use: the flag if given, else ``$EDGEFLEET_LOG_FORMAT``, else text.

    Raises `LogFormatError` naming the source for anything but ``text`` or ``json``.
    """
    value, source = (flag, "--log-format") if flag else (environ.get(ENV_VAR), ENV_VAR)
    if not value:
        return "text"
    lowered = value.strip().lower()
    if lowered == "text":
        return "text"
    if lowered == "json":
        return "json"
    raise LogFormatError(f"{source} must be one of {', '.join(LOG_FORMATS)}, found {value!r}")


def add_format_argument(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """Add ``--log-format text|json``; on a subcommand it overrides the top-level one only
    when given (``SUPPRESS``), so ``edgefleet --log-format json fleet serve`` works too."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS if subcommand else None,
        help=f"log lines as text or one JSON object per line (default: ${ENV_VAR}, else text)",
    )


def set_process_fields(**fields: str) -> None:
    """Fields every JSON line of this process carries (the agent: its ``device_id``)."""
    _process_fields.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: see the module docstring for its fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        line.update(_process_fields)
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        device_id = DEVICE_ID.get()
        if device_id is not None:
            line["device_id"] = device_id
        for name in ("request_id", "device_id", *EXTRA_FIELDS):
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=repr, ensure_ascii=False)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as e:  # a bad %-format in a log call must not lose the line
        return f"{record.msg!r} (unformattable with {record.args!r}: {e})"


def configure(
    level: str | int,
    log_format: LogFormat,
    stream: TextIO | None = None,
    *,
    force: bool = False,
) -> None:
    """Send the root logger's records to ``stream`` (stdout) in ``log_format``.

    Replaces the handler a previous call installed, so calling it again switches format.
    Like `logging.basicConfig`, it leaves a root logger that someone else gave handlers
    alone (pytest's capture, an embedding program), unless ``force``.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_edgefleet", False)]
    if len(ours) < len(root.handlers) and not force:
        return
    for old in ours:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler._edgefleet = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    _active["format"] = log_format


def console(text: str, stream: TextIO | None = None, **fields: str) -> None:
    """Write a line meant for the operator whatever the log level (the fleet's address,
    a token shown once): ``text`` as is in text format, else a JSON line like the log's,
    at level ``INFO`` from logger ``edgefleet.console``, with ``fields`` beside ``msg``,
    so a JSON log stays one object per line."""
    out = stream or sys.stdout
    if _active["format"] == "json":
        record = logging.LogRecord("edgefleet.console", logging.INFO, "", 0, text, None, None)
        line = json.loads(JsonFormatter().format(record))
        text = json.dumps(line | fields, ensure_ascii=False)
    print(text, file=out, flush=True)
