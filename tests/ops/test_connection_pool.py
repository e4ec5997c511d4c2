"""Pooled database connections (shared.db.ping_idle_connections): one that sat idle is checked
before a request uses it, so a connection the database dropped meanwhile (a restart, a proxy's
idle timeout) is replaced instead of failing the request; one in steady use is not pinged."""
from __future__ import annotations

from sqlalchemy import event, text

from shared import db as shared_db
from shared.extensions import db
from tests.conftest import AUTH


def drop_connections_of(admin_engine, application_name: str) -> int:
    """What a database restart does to this service's idle connections."""
    with admin_engine.begin() as conn:
        return len(conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = :name AND pid <> pg_backend_pid()"), {"name": application_name}).all())


def count_pings(app) -> list[int]:
    pings = [0]
    with app.app_context():
        dialect = db.engine.dialect
        original = dialect.do_ping

        def counted(connection):
            pings[0] += 1
            return original(connection)

        dialect.do_ping = counted
    return pings


def test_a_connection_dropped_while_idle_is_replaced_before_a_request_uses_it(make_app, admin_engine, monkeypatch):
    app = make_app("patient")
    client = app.test_client()
    assert client.get("/api/patients", headers=AUTH).status_code == 200  # a connection is pooled now
    assert drop_connections_of(admin_engine, "patient_service") >= 1
    monkeypatch.setattr(shared_db, "IDLE_PING_SECONDS", 0.0)  # it has been idle long enough

    response = client.get("/api/patients", headers=AUTH)

    assert response.status_code == 200, response.get_json()


def test_a_connection_in_steady_use_is_not_pinged_at_every_request(make_app):
    app = make_app("patient")
    client = app.test_client()
    pings = count_pings(app)
    checkouts = [0]
    with app.app_context():
        event.listen(db.engine, "checkout", lambda *_: checkouts.__setitem__(0, checkouts[0] + 1))

    for _ in range(5):
        assert client.get("/api/patients", headers=AUTH).status_code == 200

    assert checkouts[0] >= 5  # each request takes a connection from the pool
    assert pings[0] == 0


def test_an_idle_connection_is_pinged_once_before_use(make_app, monkeypatch):
    app = make_app("patient")
    client = app.test_client()
    assert client.get("/api/patients", headers=AUTH).status_code == 200
    pings = count_pings(app)
    monkeypatch.setattr(shared_db, "IDLE_PING_SECONDS", 0.0)

    assert client.get("/api/patients", headers=AUTH).status_code == 200

    assert pings[0] == 1
