"""Every column of the patient service's schema that could hold personal data is declared in
`privacy.COVERAGE` with what an erasure does with it: a new table or column fails here until
someone decides (and the erasure then reaches it)."""
from __future__ import annotations

from sqlalchemy import text

from patient_service.privacy import COVERAGE

# Types that cannot hold a name, an address, an e-mail address or a date of birth.
NOT_TEXT = ("bigint", "integer", "smallint", "boolean", "numeric", "double precision", "real",
            "timestamp with time zone", "timestamp without time zone", "uuid")


def columns_that_could_hold_personal_data(admin_engine) -> set[tuple[str, str]]:
    with admin_engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'patient_service' AND table_name <> 'alembic_version' "
            "AND data_type <> ALL(:not_text)"), {"not_text": list(NOT_TEXT)}).all()
    return {(table, column) for table, column in rows}


def tables_of_the_schema(admin_engine) -> set[str]:
    with admin_engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'patient_service' "
            "AND table_name <> 'alembic_version'")).scalars())


def test_every_table_of_the_patient_schema_is_declared(migrated, admin_engine):
    tables = tables_of_the_schema(admin_engine)

    assert tables - set(COVERAGE) == set(), "declare these tables in patient_service.privacy.COVERAGE"
    assert set(COVERAGE) - tables == set(), "COVERAGE names tables that do not exist"


def test_every_column_that_could_hold_personal_data_is_declared(migrated, admin_engine):
    undeclared = {(table, column) for table, column in columns_that_could_hold_personal_data(admin_engine)
                  if "*" not in COVERAGE.get(table, {}) and column not in COVERAGE.get(table, {})}

    assert undeclared == set(), "declare these columns in patient_service.privacy.COVERAGE"


def test_the_declared_columns_exist(migrated, admin_engine):
    columns = columns_that_could_hold_personal_data(admin_engine)
    declared = {(table, column) for table, entries in COVERAGE.items() for column in entries if column != "*"}

    assert declared - columns == set()
