"""Bulk writes in the current unit of work: rows collected as `PendingWrites` and written with
PostgreSQL's `COPY … FROM STDIN` (several times faster than multi-row INSERTs) or one statement
for many rows — every bulk path (batches, an import's therapists, versions, outbox events)."""
from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Generic, TypeVar

import psycopg2
from sqlalchemy.exc import DBAPIError

from shared.extensions import db

RowT = TypeVar("RowT")


class JsonText(str):
    """A value already serialised as JSON text: copied as it is, never serialised again."""


def copy_value(value: Any) -> str:
    """One value in COPY's text format (NULL is `\\N`; backslash, tab and line breaks escaped).
    dicts and lists are written as JSON (for jsonb columns)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):  # the most common: tested first
        text = value
    elif isinstance(value, bool):
        return "t" if value else "f"
    elif isinstance(value, (int, float)):
        return str(value)
    elif isinstance(value, (datetime, date)):
        return value.isoformat()
    elif isinstance(value, uuid.UUID):
        return str(value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        raise TypeError(f"no COPY text for {type(value).__name__}")
    # `in` first: a search is a fraction of what `replace` costs on a long text, even with nothing
    # to replace, and most texts (an import's JSON) have none of these characters.
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def copy_rows(table: Any, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """COPY `rows` (values in the order of `columns`) into `table` (a SQLAlchemy `Table`), inside the
    session's current transaction; columns left out take their defaults (ids from their sequences).
    What the session has pending is flushed first, so the rows see it (foreign keys). A database
    error is raised as SQLAlchemy's (an `IntegrityError` for a unique index), as an INSERT's would be."""
    copy_lines(table, columns, ("\t".join([copy_value(value) for value in row]) + "\n" for row in rows))


def copy_lines(table: Any, columns: Sequence[str], lines: Iterable[str]) -> None:
    """`copy_rows` for rows already in COPY's text format, each line ending in a line break (a bulk
    path that prepares most of each line elsewhere, e.g. where it validated the data)."""
    data = "".join(lines).encode()
    if not data:
        return
    db.session.flush()
    quoted = ", ".join(f'"{column}"' for column in columns)
    target = f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'
    statement = f"COPY {target} ({quoted}) FROM STDIN"
    cursor = db.session.connection().connection.cursor()
    try:
        cursor.copy_expert(statement, io.BytesIO(data), size=1 << 20)
    except psycopg2.Error as error:
        raise DBAPIError.instance(statement, None, error, psycopg2.Error, hide_parameters=True) from None
    finally:
        cursor.close()


@dataclass
class PendingRows(Generic[RowT]):
    """Rows of one table waiting to be written together, and how: `write` takes them all at once
    (`copy_into`, `execute_many`, `versioning.pending_versions`). A row may be a record still
    changed by later items (a batch's new one): it is encoded when written, not when added."""

    table: str
    write: Callable[[list[RowT]], None]
    rows: list[RowT] = field(default_factory=list)

    def append(self, row: RowT) -> None:
        self.rows.append(row)

    def flush(self) -> int:
        """Write the rows and let go of them; how many there were."""
        rows, self.rows = self.rows, []
        if rows:
            self.write(rows)
        return len(rows)


Written = dict[str, int]  # rows written by table, as `PendingWrites.flush` reports them


class PendingWrites:
    """A unit of bulk writes: several tables' `PendingRows`, written in the order given (parents
    before children, version rows last) when `flush`ed, after what the session has pending (changes
    to loaded records first: a key one gives up may be taken by a new row)."""

    def __init__(self, *tables: PendingRows[Any]) -> None:
        self.tables = tables

    def flush(self) -> Written:
        db.session.flush()
        written: Written = {}
        for table in self.tables:
            count = table.flush()
            if count:
                written[table.table] = written.get(table.table, 0) + count
        return written


def copy_into(table: Any, columns: Sequence[str], line: Callable[[RowT], str]) -> Callable[[list[RowT]], None]:
    """A `PendingRows.write` that copies the rows into `table`, each made a COPY line by `line`."""
    return lambda rows: copy_lines(table, columns, map(line, rows))


def copy_values(table: Any, columns: Sequence[str],
                values: Callable[[RowT], Sequence[Any]]) -> Callable[[list[RowT]], None]:
    """`copy_into` for rows made values (in the order of `columns`) by `values`."""
    return copy_into(table, columns, lambda row: "\t".join([copy_value(value) for value in values(row)]) + "\n")


def execute_many(statement: Any, parameters: Callable[[RowT], dict[str, Any]]) -> Callable[[list[RowT]], None]:
    """A `PendingRows.write` that runs `statement` (an INSERT or UPDATE) once for all rows, each
    row's bind parameters made by `parameters` (one executemany: SQLAlchemy sends an INSERT's rows
    as multi-row VALUES, psycopg2's `execute_values` way)."""
    def write(rows: list[RowT]) -> None:
        db.session.execute(statement, [parameters(row) for row in rows])
    return write
