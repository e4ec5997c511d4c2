"""Logging set-up: `LOG_FORMAT=text|json`, with service, request id and import id on each line.

Log lines carry ids and counts, never personal data; `describe_exception` gives an exception's
class and location without its message (database messages can hold row values). The import id
of the file being imported is kept in a context variable (`import_context`), so every line
logged while a file is imported carries it, whichever module logs it.
"""
from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from flask import current_app, g, has_app_context, has_request_context
from pythonjsonlogger.json import JsonFormatter

_current_import_id: ContextVar[int | None] = ContextVar("import_id", default=None)

# Libraries whose DEBUG lines would name objects and URLs (a bucket object's name holds the
# patient's name); they log at WARNING and above whatever LOG_LEVEL says.
QUIET_LIBRARIES = ("apscheduler", "urllib3", "google", "watchdog")


@contextmanager
def import_context(import_id: int) -> Iterator[None]:
    """Lines logged inside, in this thread, carry `import_id`."""
    token = _current_import_id.set(import_id)
    try:
        yield
    finally:
        _current_import_id.reset(token)


class ContextFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            # The app's own name when there is one: a test process holds apps of both services.
            record.service = current_app.config.get("SERVICE_NAME", self.service) if has_app_context() \
                else self.service
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        if not hasattr(record, "import_id"):
            record.import_id = _current_import_id.get()
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, service,
    request_id, import_id, and the traceback as `exc_info` when there is one."""

    FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s %(import_id)s"

    def __init__(self, service: str | None = None):
        super().__init__(self.FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
        self.service = service  # for lines no ContextFilter has seen, such as gunicorn's own

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        if log_data.get("service") is None:
            log_data["service"] = self.service

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextLineFormatter(logging.Formatter):
    """`time LEVEL [service] logger: message`, and `[service import 7]` on lines logged while a
    file is imported, as JSON lines carry `import_id`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(service)s%(import_tag)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        import_id = record.__dict__.get("import_id")
        record.import_tag = f" import {import_id}" if import_id is not None else ""
        return super().format(record)


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time: a stream captured when the app was made
    (by pytest, say) may be closed by the time a late line, such as an atexit hook's, arrives."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str, fmt: str, service: str) -> None:
    root = logging.getLogger()
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter(service))
    else:
        handler.setFormatter(TextLineFormatter())
    handler.addFilter(ContextFilter(service))
    for old in [h for h in root.handlers if getattr(h, "_curavani", False)]:
        root.removeHandler(old)
    handler._curavani = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # apscheduler: one INFO line per job run, every second, says nothing an operator needs.
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def describe_exception(error: BaseException) -> str:
    """`ClassName at module.py:123` — safe to log and to mail: no message text, no values."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"
