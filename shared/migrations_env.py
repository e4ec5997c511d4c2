"""The Alembic environment both services' migration folders run.

Each service has its own history in `migrations/<service>/`, its own PostgreSQL schema and its
own version table inside that schema, so the two can share a database or live apart.
"""
from __future__ import annotations

import zlib

from alembic import context
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from flask import current_app
from sqlalchemy import text
from sqlalchemy.schema import SchemaItem

from shared.extensions import db


def run_migrations() -> None:
    schema = current_app.config["DB_SCHEMA"]

    def include_name(name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames) -> bool:
        return name == schema if type_ == "schema" else True

    def include_object(obj: SchemaItem, name: str | None, type_: NameFilterType, reflected: bool,
                       compare_to: SchemaItem | None) -> bool:
        return getattr(obj, "schema", schema) == schema if type_ == "table" else True

    options = dict(target_metadata=db.metadata, version_table_schema=schema, include_schemas=True,
                   include_name=include_name, include_object=include_object, compare_type=True)

    if context.is_offline_mode():
        context.configure(url=str(db.engine.url), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    with db.engine.connect() as connection:
        # Two replicas starting at once must not both migrate: serialise on a per-schema lock.
        connection.execute(text("SELECT pg_advisory_lock(:key)"),
                           {"key": zlib.crc32(f"migrate:{schema}".encode())})
        try:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            connection.commit()
            context.configure(connection=connection, **options)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                               {"key": zlib.crc32(f"migrate:{schema}".encode())})
            connection.commit()
