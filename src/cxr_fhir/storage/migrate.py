"""Schema migrations with Alembic, run from the application (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine


def _config(migrations_dir: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    return cfg


def upgrade(engine: Engine, migrations_dir: Path) -> tuple[str | None, str | None]:
    """Bring the schema to head; returns (revision before, revision after). Idempotent."""
    before = current_revision(engine)
    cfg = _config(migrations_dir)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(migrations_dir: Path) -> str | None:
    return ScriptDirectory.from_config(_config(migrations_dir)).get_current_head()


def is_current(engine: Engine, migrations_dir: Path) -> bool:
    return current_revision(engine) == head_revision(migrations_dir)
