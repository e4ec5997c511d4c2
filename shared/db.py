"""Units of work and engine settings. A unit of work commits in exactly one place."""
from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache, wraps
from typing import Any, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

import psycopg2
from flask_sqlalchemy.session import Session
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from sqlalchemy import Engine, Text, any_, bindparam, event, func, insert, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import QueryableAttribute, scoped_session
from sqlalchemy.sql import ColumnElement, Select

from shared.errors import Duplicate
from shared.extensions import db

T = TypeVar("T")
P = ParamSpec("P")

ENGINE_OPTIONS = {
    "hide_parameters": True,  # row values never reach logs or exception text
    "pool_size": 5,
    "max_overflow": 5,
}
IDLE_PING_SECONDS = 10.0


def ping_idle_connections(engine: Engine) -> None:
    """Check a pooled connection before it is used only when it has sat idle for
    `IDLE_PING_SECONDS`: one the database dropped meanwhile (a restart, a proxy's idle timeout)
    is replaced before a request sees it. SQLAlchemy's `pool_pre_ping` pings at every checkout,
    which is a round trip per request, a quarter of an appointment write's (bench/api_write.py);
    a connection in steady use is checked by its use (a disconnect found then invalidates the
    whole pool, so the others are replaced too). SQLAlchemy's "pessimistic" recipe, on idle ones."""

    @event.listens_for(engine, "checkin")
    def returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error:
            raise DisconnectionError("a pooled connection was lost while idle") from None  # the pool retries


def compiled_insert(table: Any, columns: Iterable[str], prefix: str) -> str:
    """`INSERT INTO table (columns) VALUES (%(<prefix><column>)s, …)` as psycopg2 text, for a caller
    that sends it with other statements in one round trip (no RETURNING)."""
    return str(insert(table).inline().values({column: bindparam(f"{prefix}{column}") for column in columns})
               .compile(dialect=PGDialect_psycopg2()))


@contextmanager
def unit_of_work() -> Iterator[scoped_session[Session]]:
    """Commit everything done inside on success; roll it all back on any exception."""
    session = db.session
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def own_transaction() -> Iterator[Any]:
    """A psycopg2 cursor on a pooled connection of its own, outside the session, in autocommit
    mode: the caller's SQL carries its own `BEGIN` and `COMMIT`, sent with its first and last
    statements, so a short write is two round trips rather than four (psycopg2 sends `BEGIN` by
    itself, and `commit()` is another) and no ORM session is made for it. A transaction left open
    (an error, an early return) is rolled back; a connection lost meanwhile leaves the pool.
    The single appointment write (`therapist_service.appointments.services.write_appointment`)."""
    connection = db.engine.raw_connection()
    dbapi_connection: Any = connection.dbapi_connection
    dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    try:
        yield cursor
    finally:
        try:
            if dbapi_connection.info.transaction_status != TRANSACTION_STATUS_IDLE:
                cursor.execute("ROLLBACK")  # in autocommit mode psycopg2's rollback() sends nothing
            dbapi_connection.autocommit = False  # as the pool lent it
        except psycopg2.Error as error:  # lost (its status is unknown): the pool makes a new one
            connection.invalidate(error)
        cursor.close()
        connection.close()


# Statements the database has prepared, by connection (the DBAPI connection a cursor names; a
# connection closed or invalidated leaves with its entry).
_PREPARED: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()
_PARAMETER = re.compile(r"%\((\w+)\)s")


def prepared(cursor: Any, *statements: str) -> str:
    """The statements (psycopg2's `%(name)s` style) as one query of `EXECUTE`s, with the same
    parameters: sent as one round trip, the last one's rows are its result.

    The database parses and plans a statement sent as text every time; a prepared one it parses
    once per connection and plans from its cache: about half of the database's work for a short
    write (pgbench on the peer's transaction: `-M prepared` 1.8 times the rate of `-M simple`).
    psycopg2 has no protocol-level prepared statements, so this uses SQL's `PREPARE`: each
    statement is prepared on the cursor's connection the first time it is asked for there, in a
    round trip of its own (once per connection and statement), and is `EXECUTE`d from then on.
    A prepared statement belongs to the database session, not to a transaction: a rollback keeps
    it, which is why it is remembered as soon as its `PREPARE` succeeds. Needs connections the
    service has to itself (directly, or a pooler in session mode; PgBouncer's transaction mode
    loses SQL `PREPARE`s between transactions), and a restart after a migration of the tables
    its statements name (ADR 0019)."""
    done = _PREPARED.get(cursor.connection)
    if done is None:  # not setdefault: that makes a weak reference and a set on every call
        done = _PREPARED[cursor.connection] = set()
    for statement in statements:
        if statement not in done:
            cursor.execute(_prepare_and_execute(statement)[0])
            done.add(statement)
    return ";\n".join(_prepare_and_execute(statement)[1] for statement in statements)


@cache
def _prepare_and_execute(statement: str) -> tuple[str, str]:
    if "%%" in statement:  # a PREPARE is sent without parameters: psycopg2 would not unescape it
        raise ValueError("a prepared statement cannot hold a literal %")
    names = list(dict.fromkeys(_PARAMETER.findall(statement)))
    name = "s_" + hashlib.sha256(statement.encode()).hexdigest()[:20]
    body = _PARAMETER.sub(lambda found: f"${names.index(found[1]) + 1}", statement)
    arguments = f"({', '.join(f'%({parameter})s' for parameter in names)})" if names else ""
    return f"PREPARE {name} AS {body}", f"EXECUTE {name}{arguments}"


@contextmanager
def unique_or_duplicate(index: str, existing_id: Callable[[], int | None], detail: str) -> Iterator[None]:
    """A savepoint in which a clash on the unique `index` becomes `Duplicate(existing_id())`.

    The database decides, so two racing writes cannot both succeed; the savepoint keeps the
    caller's transaction usable (a batch or an import goes on with its other items). Make the
    changes inside it: `begin_nested()` first flushes what is pending, and a clash flushed
    outside the savepoint would break the whole transaction.
    """
    try:
        with db.session.begin_nested():
            yield
    except IntegrityError as error:
        if getattr(getattr(error.orig, "diag", None), "constraint_name", None) != index:
            raise
        raise Duplicate(detail, existing_id=existing_id()) from None


def atomic(view: Callable[P, T]) -> Callable[P, T]:
    """Run a view's service call as one unit of work (a REST request is one transaction)."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with unit_of_work():
            return view(*args, **kwargs)

    return wrapper


def page_of(query: Select[T], *, order_by: ColumnElement[Any] | QueryableAttribute[Any], page: int,
            page_size: int) -> tuple[list[T], int]:
    """One page of `query`'s entities in `order_by` order, and how many there are in all."""
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    offset = (page - 1) * page_size
    if offset >= total:
        return [], total  # past the last page; a huge page number would overflow OFFSET
    return list(db.session.scalars(query.order_by(order_by).limit(page_size).offset(offset))), total


def page_count(total: int, page_size: int) -> int:
    """How many pages `total` items fill: 0 for none."""
    return -(-total // page_size)


def any_text(values: Iterable[str]) -> ColumnElement[Any]:
    """`column == any_text(values)`: `column = ANY(%(values)s)`, the values sent as one array. An
    IN list of many values costs SQLAlchemy a bound parameter each (45,000 ids: 0.1 s of Python)."""
    return any_(bindparam(None, list(values), type_=ARRAY(Text)))


def reserve_ids(sequence: str, count: int) -> list[int]:
    """`count` fresh values of `sequence` in one round trip: ids for records created in bulk,
    whose version rows need the id before anything is flushed."""
    if count <= 0:
        return []
    return list(db.session.scalars(text("SELECT nextval(CAST(:sequence AS regclass)) FROM generate_series(1, :n)"),
                                   {"sequence": sequence, "n": count}))


class IdReserver:
    """`reserve_ids` a block at a time, for callers that do not know up front how many they need."""

    def __init__(self, sequence: str, block: int = 200):
        self.sequence = sequence
        self.block = block
        self._ids: list[int] = []

    def next(self) -> int:
        if not self._ids:
            self._ids = reserve_ids(self.sequence, self.block)[::-1]
        return self._ids.pop()


def bulk_first(bulk: Callable[[], T], one_by_one: Callable[[], T]) -> T:
    """Write all at once, and only if that meets a constraint (a row someone else created
    meanwhile) undo it and write one by one, where a clash is one item's error. The batch runner
    and the importers write this way."""
    try:
        with db.session.begin_nested():
            return bulk()
    except IntegrityError:
        return one_by_one()
