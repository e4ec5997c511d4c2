"""Outages of what a background job depends on (the import source, the event broker): one alert
when it stops answering, one when it answers again, and how long to wait before the next try.

`OutageLatch` remembers an outage in a column of the job's state row (`<what>_down_since`), and
records each alert in the same transaction as the change of that column, under a key made of the
outage's start: so an outage is alerted once and its end once, whichever process and however many
passes see it (SPEC §7.3). `Backoff` counts failures in a row and says when to try again.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.db import unit_of_work
from shared.imports import alerts
from shared.imports.models import AlertMixin
from shared.schemas import now_utc

# Subject and body of an alert: (down, since, error kind) → (subject, body); `down` is False for
# the recovery, whose error kind is None. Ids and kinds only: no personal data (SPEC §7.3).
DescribeOutage = Callable[[bool, datetime, str | None], tuple[str, str]]

_UNKNOWN: Any = object()  # `OutageLatch.down_since` before this process has looked at the state row


@dataclass
class OutageLatch:
    """Latch an outage in the state row; each call is a unit of work of its own (call inside an
    app context). `down_since` is this process's last look at the row: a recovery is looked for
    in the row only while it says down or has not looked yet, so a job that is well costs nothing."""

    alert_model: type[AlertMixin]
    state_row: Callable[[], Any]  # the job's state row, locked for update, in the current transaction
    since_column: str  # the row's column that holds when the outage began (None: no outage)
    keys: tuple[str, str]  # alert key prefixes for the outage and its end: "<prefix>:<since, ISO 8601>"
    describe: DescribeOutage
    error_column: str | None = None  # a column that holds the error kind while down; cleared after
    down_since: datetime | None = field(default=_UNKNOWN)

    def forget(self) -> None:
        """Look at the row again on the next call: another process may have latched (or ended) an
        outage meanwhile — call it after taking the lead."""
        self.down_since = _UNKNOWN

    def down(self, error_kind: str) -> datetime:
        """A try failed: latch the outage and raise its alert if it is new. When it began."""
        with unit_of_work():
            state = self.state_row()
            if self.error_column is not None:
                setattr(state, self.error_column, error_kind)
            since = getattr(state, self.since_column)
            if since is None:
                since = now_utc()
                setattr(state, self.since_column, since)
                alerts.enqueue(self.alert_model, f"{self.keys[0]}:{since.isoformat()}",
                               *self.describe(True, since, error_kind))
        self.down_since = since
        return since

    def up(self) -> datetime | None:
        """A try succeeded: end a latched outage and raise the recovery alert. When the outage that
        ended began; None when there was none."""
        if self.down_since is None:
            return None
        with unit_of_work():
            state = self.state_row()
            since = getattr(state, self.since_column)
            if since is not None:
                alerts.enqueue(self.alert_model, f"{self.keys[1]}:{since.isoformat()}",
                               *self.describe(False, since, None))
                setattr(state, self.since_column, None)
            if self.error_column is not None:
                setattr(state, self.error_column, None)
        self.down_since = None
        return since


def stepped(schedule: Sequence[float]) -> Callable[[int], float]:
    """Delays from a schedule: the n-th failure in a row waits `schedule[n - 1]`; the last one repeats."""
    return lambda failures: schedule[min(failures, len(schedule)) - 1]


def doubling(first: float, most: float, *, doublings: int = 20) -> Callable[[int], float]:
    """Delays that double: `first`, 2 × `first`, 4 × `first` … (at most `doublings` times), never over `most`."""
    return lambda failures: min(first * 2 ** min(failures - 1, doublings), most)


@dataclass
class Backoff:
    """Failures in a row, and when the next try is due (`time.monotonic()`)."""

    delay: Callable[[int], float]  # seconds to wait after the n-th failure in a row (n ≥ 1)
    failures: int = 0
    next_attempt_at: float = 0.0

    def failed(self) -> float:
        """Count a failure; the seconds until the next try."""
        self.failures += 1
        seconds = self.delay(self.failures)
        self.next_attempt_at = time.monotonic() + seconds
        return seconds

    def succeeded(self) -> None:
        self.failures = 0
        self.next_attempt_at = 0.0

    def due(self, clock: float | None = None) -> bool:
        return (time.monotonic() if clock is None else clock) >= self.next_attempt_at
