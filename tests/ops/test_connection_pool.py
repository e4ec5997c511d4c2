"""Pooled database connections (shared.db.ping_idle_connections): one that sat idle is checked
before a request uses it, so a connection the database dropped meanwhile (a restart, a proxy's
idle timeout) is replaced instead of failing the request; one in steady use is not pinged. And the
connection a single appointment write borrows outside the session (shared.db.own_transaction)
goes back as it came, or not at all."""
from __future__ import annotations

import pytest
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from sqlalchemy import event, text

from shared import db as shared_db
from shared.extensions import db
from tests.appointments.support import appointment, post
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


# ---- the single appointment write's own transaction (shared.db.own_transaction) ------------------

def pooled_connections_state(app) -> list[tuple[bool, int]]:
    """(autocommit, transaction status) of every connection the pool holds, checked out at once."""
    with app.app_context():
        held = [db.engine.raw_connection() for _ in range(db.engine.pool.checkedin())]
        try:
            return [(c.dbapi_connection.autocommit, c.dbapi_connection.info.transaction_status) for c in held]
        finally:
            for connection in held:
                connection.close()


def test_a_single_appointment_write_gives_its_connection_back_idle_whatever_the_outcome(make_app, admin_engine):
    """Created, stale (nothing written, nothing committed), overlapping (23P01 mid-transaction):
    each leaves the pool's connection out of any transaction and out of autocommit mode."""
    app = make_app("therapist")
    client = app.test_client()
    assert post(client, appointment("pool-0", start="2025-07-13 09:00", end="2025-07-13 09:50")).status_code == 201
    connects = [0]
    with app.app_context():
        event.listen(db.engine, "connect", lambda *_: connects.__setitem__(0, connects[0] + 1))
    body = appointment("pool-1")
    outcomes = [post(client, body).status_code, post(client, appointment("pool-2")).status_code,
                post(client, body).status_code]

    assert outcomes == [201, 409, 200]  # created, overlap, ignored-stale (last: nothing after it rolls back)
    assert connects[0] == 0  # the pool's connection served them all: none was thrown away
    states = pooled_connections_state(app)
    assert states and all(state == (False, TRANSACTION_STATUS_IDLE) for state in states), states
    with admin_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'therapist_service' "
                                "AND state LIKE 'idle in transaction%'")) == 0


def test_a_connection_lost_before_a_single_write_leaves_the_pool(make_app, admin_engine, monkeypatch):
    """Not pinged (in steady use), the write meets a dropped connection: that request fails, the
    connection is thrown away, and the next write has a fresh one."""
    app = make_app("therapist")
    client = app.test_client()
    assert post(client, appointment("lost-1")).status_code == 201
    monkeypatch.setattr(shared_db, "IDLE_PING_SECONDS", 3600.0)
    assert drop_connections_of(admin_engine, "therapist_service") >= 1

    assert post(client, appointment("lost-2", start="2025-07-15 09:00", end="2025-07-15 09:50")).status_code == 500
    response = post(client, appointment("lost-3", start="2025-07-16 09:00", end="2025-07-16 09:50"))

    assert response.status_code == 201, response.get_json()


# ---- statements prepared once per connection (shared.db.prepared) --------------------------------

def prepared_statements_of_pooled_connections(app) -> list[list[str]]:
    with app.app_context():
        held = [db.engine.raw_connection() for _ in range(db.engine.pool.checkedin())]
        try:
            statements = []
            for connection in held:
                cursor = connection.dbapi_connection.cursor()
                cursor.execute("SELECT statement FROM pg_prepared_statements ORDER BY statement")
                statements.append([row[0] for row in cursor.fetchall()])
                cursor.close()
                connection.dbapi_connection.rollback()
            return statements
        finally:
            for connection in held:
                connection.close()


def test_a_connection_prepares_the_write_statements_once_and_keeps_them_through_rollbacks(make_app):
    """A second PREPARE of a name would fail (42P05): that every write after the first succeeds
    on the same connection, through an overlap's and a stale write's rollback, shows each
    statement is prepared once and survives them."""
    app = make_app("therapist")
    client = app.test_client()
    body = appointment("prep-1")
    outcomes = [post(client, body).status_code, post(client, appointment("prep-2")).status_code,
                post(client, body).status_code,
                post(client, {**body, "updatedAt": "2025-12-01 08:00:00"}).status_code,
                post(client, appointment("prep-3", start="2025-07-20 09:00", end="2025-07-20 09:50")).status_code]

    assert outcomes == [201, 409, 200, 200, 201]
    (statements,) = prepared_statements_of_pooled_connections(app)
    tables = ("appointments", "appointment_versions", "event_outbox")
    assert [table for table in tables for statement in statements
            if statement.startswith("PREPARE") and f"INSERT INTO therapist_service.{table} " in statement] == list(tables)
    assert any("UPDATE therapist_service.appointments SET" in statement for statement in statements)
    assert any("pg_advisory_xact_lock($1, key)" in statement for statement in statements)
    assert len(statements) == len(set(statements)) == 6  # lock, read, insert, update, version, event


def test_a_prepared_statement_takes_each_named_parameter_in_one_place():
    prepare, execute = shared_db._prepare_and_execute(
        "SELECT id FROM t WHERE org_id = %(org_id)s AND id <> %(id)s AND other = %(org_id)s")

    assert prepare.endswith("AS SELECT id FROM t WHERE org_id = $1 AND id <> $2 AND other = $1")
    assert execute == f"EXECUTE {prepare.split()[1]}(%(org_id)s, %(id)s)"


def test_a_statement_with_a_literal_percent_sign_is_not_prepared():
    with pytest.raises(ValueError, match="literal %"):
        shared_db._prepare_and_execute("SELECT 1 WHERE name LIKE 'a%%' AND id = %(id)s")
