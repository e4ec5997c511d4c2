"""Both services' migrations on a fresh database of their own: upgrade from empty, downgrade to
base, upgrade again; and the migrated schema is what the models declare."""
from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import API_TOKENS, SCHEMAS
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, text

from patient_service import create_app as create_patient_app
from shared.config import sqlalchemy_url
from shared.devdb import drop_database, ensure_database
from shared.extensions import db
from therapist_service import create_app as create_therapist_app

FACTORIES = {"patient_service": create_patient_app, "therapist_service": create_therapist_app}
CORE_TABLES = {"patient_service": {"patients", "patient_versions"},
               "therapist_service": {"therapists", "therapist_versions"}}


@pytest.fixture
def fresh_database(database_url):
    """An empty database on the test server, dropped afterwards."""
    name = f"curavani_migrations_{uuid.uuid4().hex[:8]}"
    url = ensure_database(database_url, name)  # the server of `database_url`, another database
    engine = create_engine(sqlalchemy_url(url))
    yield url, engine
    engine.dispose()
    drop_database(database_url, name)


def apps_for(url):
    config = {"DATABASE_URL": url, "API_TOKENS": API_TOKENS, "IMPORTS_ENABLED": False}
    return {schema: factory(config) for schema, factory in FACTORIES.items()}


def run_on_each(apps, command, **kwargs):
    for app in apps.values():
        with app.app_context():
            command(**kwargs)
            db.engine.dispose()


def tables(engine, schema):
    with engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema"),
            {"schema": schema}).scalars())


def recorded_revision(engine, schema):
    with engine.connect() as conn:
        return conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalars().all()


def test_upgrade_from_empty_downgrade_to_base_and_upgrade_again(fresh_database):
    url, engine = fresh_database
    apps = apps_for(url)
    assert all(tables(engine, schema) == set() for schema in SCHEMAS)

    run_on_each(apps, upgrade)
    after_first_upgrade = {schema: tables(engine, schema) for schema in SCHEMAS}
    for schema in SCHEMAS:
        assert CORE_TABLES[schema] | {"alembic_version"} <= after_first_upgrade[schema], schema
        assert len(recorded_revision(engine, schema)) == 1

    run_on_each(apps, downgrade, revision="base")
    for schema in SCHEMAS:
        assert tables(engine, schema) <= {"alembic_version"}, schema
        assert recorded_revision(engine, schema) == []

    run_on_each(apps, upgrade)
    for schema in SCHEMAS:
        assert tables(engine, schema) == after_first_upgrade[schema], schema


def test_each_service_migrates_only_its_own_schema(fresh_database):
    url, engine = fresh_database
    apps = apps_for(url)

    run_on_each({"patient_service": apps["patient_service"]}, upgrade)

    assert CORE_TABLES["patient_service"] <= tables(engine, "patient_service")
    assert tables(engine, "therapist_service") == set()


def test_upgrading_twice_changes_nothing(fresh_database):
    url, engine = fresh_database
    apps = apps_for(url)
    run_on_each(apps, upgrade)
    revisions = {schema: recorded_revision(engine, schema) for schema in SCHEMAS}

    run_on_each(apps, upgrade)

    assert {schema: recorded_revision(engine, schema) for schema in SCHEMAS} == revisions


@pytest.mark.parametrize("schema", SCHEMAS)
def test_migrated_schema_matches_the_models(fresh_database, schema):
    url, engine = fresh_database
    apps = apps_for(url)
    run_on_each(apps, upgrade)

    def own_schema_only(obj, name, type_, reflected, compare_to):
        return getattr(obj, "schema", schema) == schema if type_ == "table" else True

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_schemas": True, "compare_type": True, "version_table_schema": schema,
            "include_name": lambda name, type_, parents: name == schema if type_ == "schema" else True,
            "include_object": own_schema_only})
        differences = compare_metadata(context, db.metadata)

    assert differences == []
