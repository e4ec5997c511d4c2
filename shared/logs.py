"""Logging set-up: `LOG_FORMAT=text|json`, with service, request id and import id on each line.

Log lines carry ids and counts, never personal data; `describe_exception` gives an exception's
class and location without its message (database messages can hold row values).
"""
from __future__ import annotations

import logging
import sys
import traceback

from flask import g, has_request_context

_CONFIGURED = {"done": False}


class ContextFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = getattr(record, "service", self.service)
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        if not hasattr(record, "import_id"):
            record.import_id = None
        return True


def configure_logging(level: str, fmt: str, service: str) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s %(import_id)s",
            rename_fields={"levelname": "level", "asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s [%(service)s] %(name)s: %(message)s"))
    handler.addFilter(ContextFilter(service))
    for old in [h for h in root.handlers if getattr(h, "_curavani", False)]:
        root.removeHandler(old)
    handler._curavani = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # One INFO line per job run, every second, says nothing an operator needs.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def describe_exception(error: BaseException) -> str:
    """`ClassName at module.py:123` — safe to log and to mail: no message text, no values."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"
