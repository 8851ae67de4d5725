"""The Alembic migrations produce exactly the SQLModel schema, on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from cxr_fhir.records import tables  # noqa: F401
from cxr_fhir.settings import PROJECT_ROOT
from cxr_fhir.storage import migrate
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


def test_0002_keeps_the_heatmap_reference_of_existing_analyses(db_url):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    now = "2026-01-01 00:00:00+00:00"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patient (id, mrn, mrn_system, family, given, sex, version_id, created_at, "
                          "updated_at) VALUES ('p1', 'M1', 's', 'Doe', 'J', 'female', 1, :t, :t)"), {"t": now})
        conn.execute(text("INSERT INTO study (id, patient_id, content_sha256, media_type, size_bytes, status, "
                          "version_id, created_at, updated_at) VALUES ('s1', 'p1', :h, 'image/png', 1, 'analyzed', "
                          "1, :t, :t)"), {"h": "a" * 64, "t": now})
        conn.execute(text("INSERT INTO analysis (id, study_id, model_name, model_version, manifest_sha256, "
                          "probabilities, top3, boxes, priority, heatmap_sha256, timings_ms, created_at) VALUES "
                          "('a1', 's1', 'm', '1', 'x', '{}', :top3, '[]', 'routine', :h, '{}', :t)"),
                     {"top3": '[{"finding": "Effusion"}]', "h": "b" * 64, "t": now})
        # A report pointing at the analysis: SQLite's table rebuild must not trip over it.
        conn.execute(text("INSERT INTO report (id, study_id, analysis_id, status, conclusion, issued, version_id, "
                          "created_at, updated_at) VALUES ('r1', 's1', 'a1', 'preliminary', 'c', :t, 1, :t, :t)"),
                     {"t": now})
    migrate.upgrade(engine, MIGRATIONS)
    migrate.upgrade(engine, MIGRATIONS)  # and again: nothing to do
    with engine.connect() as conn:
        row = conn.execute(text("SELECT overlays, thresholds, priority_reasons FROM analysis WHERE id = 'a1'")).one()
    import json

    decoded = [json.loads(v) if isinstance(v, str) else v for v in row]
    assert decoded == [{"Effusion": "b" * 64}, {}, []]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT analysis_id FROM report WHERE id = 'r1'")).scalar() == "a1"
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            tables = [r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")]
            assert not [t for t in tables if t.startswith("_alembic_tmp")]
    engine.dispose()


def test_0008_resolves_earlier_copies_of_one_instance_before_its_unique_index(db_url):
    """Before 0008 one DICOM file uploaded twice made two living studies; the upgrade keeps the
    first, retires the copy logically, and then enforces one living study per SOP Instance UID."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007_unusual_film")
    insert = ("INSERT INTO study (id, patient_id, content_sha256, media_type, size_bytes, status, sop_instance_uid, "
              "version_id, created_at, updated_at, identity_warning) VALUES (:id, 'p1', :h, 'application/dicom', 1, "
              "'analyzed', '1.2.3.4', 1, :t, :t, NULL)")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patient (id, mrn, mrn_system, family, given, sex, version_id, created_at, "
                          "updated_at) VALUES ('p1', 'M1', 's', 'Doe', 'J', 'female', 1, :t, :t)"),
                     {"t": "2026-01-01 00:00:00+00:00"})
        conn.execute(text(insert), {"id": "first", "h": "a" * 64, "t": "2026-01-01 00:00:00+00:00"})
        conn.execute(text(insert), {"id": "copy", "h": "a" * 64, "t": "2026-01-02 00:00:00+00:00"})
    migrate.upgrade(engine, MIGRATIONS)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, deleted_by FROM study ORDER BY id")).all())
    assert rows["first"] is None and rows["copy"].startswith("migration 0008")
    with engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(text(insert), {"id": "third", "h": "b" * 64, "t": "2026-01-03 00:00:00+00:00"})
    engine.dispose()
