"""Test helpers the suites share: free loopback ports, waiting with a deadline (never a fixed
sleep), and a real SMTP server (aiosmtpd) on loopback that can be stopped and started again."""
from __future__ import annotations

import email
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller

TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], Any], *, timeout: float = TIMEOUT, what: str = "condition") -> Any:
    """`predicate()`'s first truthy result, polled every 50 ms; an AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Mailbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self):
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"


class SmtpServer:
    """An SMTP server on loopback that can be stopped and started again on the same port."""

    def __init__(self):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.mailbox = Mailbox()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        with self.mailbox._lock:
            return list(self.mailbox.messages)

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.messages]

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int) -> list[EmailMessage]:
        wait_until(lambda: len(self.messages) >= count, what=f"{count} e-mail(s)")
        return self.messages


# ---- REST responses ---------------------------------------------------------------------------

PROBLEM = "application/problem+json"


def pointers(response) -> list[str]:
    return [error["pointer"] for error in response.get_json()["errors"]]


def assert_problem(response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["title"] and body["type"]
    return body


def instant_between_writes() -> datetime:
    """A moment strictly after what was written before and strictly before what is written next."""
    time.sleep(0.01)
    noted = datetime.now(UTC)
    time.sleep(0.01)
    return noted


def at_param(moment: datetime) -> str:
    return quote(moment.isoformat())


def add_record(app, **values: Any) -> int:
    """An import record written straight to the app's table (`values` over plain defaults)."""
    from shared.extensions import db

    Record = app.extensions["imports"].models.record
    now = datetime.now(UTC)
    defaults = dict(source="folder", name="00000.json", label="00000.json", status="succeeded", attempts=1,
                    retry_round=0, created_at=now, started_at=now, finished_at=now + timedelta(seconds=2),
                    counts={"created": 1, "updated": 0, "unchanged": 0, "deleted": 0, "ignored_stale": 0,
                            "failed": 0}, errors=[], warnings=[])
    with app.app_context():
        record = Record(**{**defaults, **values})
        db.session.add(record)
        db.session.commit()
        return record.id


@contextmanager
def serving(app: Any, port: int = 0) -> Iterator[str]:
    """A WSGI app on a loopback port (threaded werkzeug), as a browser or a client reaches it; its URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
