"""Schema migrations with Alembic, run from the application (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine


def _config(migrations_dir: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    return cfg


def upgrade(engine: Engine, migrations_dir: Path) -> tuple[str | None, str | None]:
    """Bring the schema to head; returns (revision before, revision after). Idempotent."""
    before = current_revision(engine)
    cfg = _config(migrations_dir)
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying and dropping it, which live foreign keys forbid; the
            # pragma only changes outside a transaction. Integrity is checked before it goes back on.
            _dbapi_execute(conn, "PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                _dbapi_execute(conn, "PRAGMA foreign_keys=ON")
    return before, current_revision(engine)


def _dbapi_execute(conn: Connection, sql: str) -> None:
    """Run on the driver's connection itself, outside SQLAlchemy's transaction handling."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None  # an open Connection always holds its driver connection
    dbapi.execute(sql)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(migrations_dir: Path) -> str | None:
    return ScriptDirectory.from_config(_config(migrations_dir)).get_current_head()


def is_current(engine: Engine, migrations_dir: Path) -> bool:
    return current_revision(engine) == head_revision(migrations_dir)
