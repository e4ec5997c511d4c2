"""The shared outage machinery (shared/background/outage.py): back-off delays, and the latch that
alerts an outage once and its end once, whoever sees it and however often."""
from __future__ import annotations

from sqlalchemy import text

from shared.background.outage import Backoff, OutageLatch, doubling, stepped


def test_stepped_delays_follow_the_schedule_and_repeat_its_last():
    delay = stepped((1, 2, 5))

    assert [delay(n) for n in range(1, 6)] == [1, 2, 5, 5, 5]


def test_doubling_delays_double_up_to_the_most():
    delay = doubling(2.0, 30.0)

    assert [delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_backoff_counts_failures_in_a_row_and_a_success_ends_them():
    backoff = Backoff(stepped((10, 20)))
    assert backoff.due()

    assert (backoff.failed(), backoff.failed()) == (10, 20)
    assert backoff.failures == 2 and not backoff.due()
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.due()


def alert_keys(admin_engine) -> list[str]:
    with admin_engine.connect() as conn:
        return list(conn.execute(text("SELECT key FROM patient_service.alerts ORDER BY id")).scalars())


def test_an_outage_is_alerted_once_and_its_end_once_also_by_two_latches(make_app, admin_engine):
    app = make_app("patient")
    imports = app.extensions["imports"]

    def latch() -> OutageLatch:
        return OutageLatch(imports.models.alert, lambda: imports.state_row(for_update=True), "source_down_since",
                           ("test:down", "test:up"), lambda down, since, kind: (f"down {down}", f"{since} {kind}"))

    first, second = latch(), latch()
    with app.app_context():
        assert first.up() is None  # nothing latched: no alert
        since = first.down("Timeout")
        assert second.down("Timeout") == since  # another process sees the same outage
        assert first.up() == since
        assert second.up() is None  # ended already
        assert first.up() is None  # known to be up: the row is not looked at again

    assert alert_keys(admin_engine) == [f"test:down:{since.isoformat()}", f"test:up:{since.isoformat()}"]
