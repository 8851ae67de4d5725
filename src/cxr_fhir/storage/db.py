"""The one engine and session factory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine


WRITE_OPTION = "cxr_sqlite_begin_immediate"


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite only opens a transaction before DML and commits DDL on its own: take over, so a
        # unit of work (and a migration) is one real transaction. SQLAlchemy's documented recipe.
        # A unit of work that reads before it writes asks for the write lock up front (IMMEDIATE):
        # a deferred one would be refused at once ("database is locked", no busy wait) whenever
        # another connection committed between its first read and its first write.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the web pages read while the worker writes; SQLite leaves foreign keys off by default.
    dbapi_conn.isolation_level = None  # see the "begin" listener in make_engine
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@contextmanager
def session_scope(engine: Engine, write: bool = False) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on any error. ``write``: it reads, then
    writes; on SQLite it then holds the write lock from its start (PostgreSQL is unaffected)."""
    bind = engine.execution_options(**{WRITE_OPTION: True}) if write else engine
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
