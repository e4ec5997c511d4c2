"""Rows written with PostgreSQL's `COPY … FROM STDIN` in the current unit of work: several times
faster than multi-row INSERTs for the bulk paths (an import's therapists, versions, outbox events)."""
from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

import psycopg2
from sqlalchemy.exc import DBAPIError

from shared.extensions import db


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
