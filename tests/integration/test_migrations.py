"""The Alembic migrations produce exactly the SQLModel schema, on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from cxr_fhir.settings import PROJECT_ROOT
from cxr_fhir.storage import migrate
from cxr_fhir.storage import tables  # noqa: F401
from cxr_fhir.storage.db import make_engine

MIGRATIONS = PROJECT_ROOT / "migrations"


def _schema(engine) -> dict:
    insp = inspect(engine)
    out = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)),
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(table)),
        }
    return out


def test_upgrade_twice_changes_nothing(db_url):
    engine = make_engine(db_url)
    before, after = migrate.upgrade(engine, MIGRATIONS)
    assert before is None and after == migrate.head_revision(MIGRATIONS)
    first = _schema(engine)
    assert {"patient", "study", "analysis", "report", "resource_version", "app_user", "audit_event",
            "outbox_delivery", "api_client"} <= set(first)

    before2, after2 = migrate.upgrade(engine, MIGRATIONS)
    assert before2 == after2 == after
    assert _schema(engine) == first
    assert migrate.is_current(engine, MIGRATIONS)
    engine.dispose()


def test_migrations_match_sqlmodel_metadata(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == [], f"migrations and tables.py disagree: {diff}"


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
