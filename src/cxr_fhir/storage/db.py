"""The one engine and session factory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from ..domain.errors import TooCostly


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite only opens a transaction before DML and commits DDL on its own: take over, so a
        # unit of work (and a migration) is one real transaction (SQLAlchemy's documented recipe).
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # hide_parameters: a database error's message must not carry the values (names, birth dates) into the logs.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True)


def _sqlite_begin(conn) -> None:
    # A writing unit of work takes the write lock up front (IMMEDIATE): two deferred
    # transactions that read and then both write deadlock, and SQLite answers one of them
    # "database is locked" at once instead of waiting out busy_timeout. Writers queue for the
    # lock; reading units stay deferred and, in WAL, never wait for a writer.
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the web pages read while the worker writes; SQLite leaves foreign keys off by default.
    dbapi_conn.isolation_level = None  # see the "begin" listener in make_engine
    # SQLite's own lower() folds ASCII only: a search for "zoë" would miss "ZOË". Python's is Unicode-aware.
    dbapi_conn.create_function("lower", 1, lambda s: s.lower() if isinstance(s, str) else s, deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """The unit of work that changes something: on SQLite it takes the write lock up front
    (BEGIN IMMEDIATE); it commits on success and rolls back on any error."""
    bind = engine.execution_options(sqlite_immediate=True) if engine.dialect.name == "sqlite" else engine
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# Each query of a read unit is given this long; past it the query is stopped and answered as too costly, so one
# request cannot hold a connection (or, on SQLite, a reader slot the checkpointer waits on) for long.
QUERY_TIMEOUT_S = 5.0


@contextmanager
def reading(engine: Engine, timeout_s: float | None = QUERY_TIMEOUT_S) -> Iterator[Session]:
    """The unit of work that only reads: a deferred transaction (in WAL it never waits for a
    writer and never blocks one). It never commits: closing it ends the transaction, so nothing
    can be written through it, and what it loaded stays readable afterwards. Its queries
    may each take ``timeout_s``; past it one is interrupted and ``TooCostly`` is raised."""
    with Session(engine, expire_on_commit=False) as session:
        if timeout_s is None:
            yield session
            return
        connection = session.connection()
        driver = connection.connection.driver_connection
        assert driver is not None  # a live pooled connection always has its driver connection
        sqlite = engine.dialect.name == "sqlite"
        deadline = [0.0]

        def arm(*_: object) -> None:  # each statement gets the whole limit, as statement_timeout does
            deadline[0] = time.monotonic() + timeout_s

        if sqlite:
            event.listen(connection, "before_cursor_execute", arm)
            # Called every 10,000 SQLite VM steps; a true answer interrupts the running statement.
            driver.set_progress_handler(lambda: time.monotonic() > deadline[0], 10_000)
        else:
            session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
        try:
            yield session
        except OperationalError as exc:
            if _interrupted(exc):
                raise TooCostly(f"the query took longer than {timeout_s:g} s; narrow the search") from None
            raise
        finally:
            if sqlite:
                event.remove(connection, "before_cursor_execute", arm)
                driver.set_progress_handler(None, 0)


def _interrupted(exc: OperationalError) -> bool:
    """SQLite's 'interrupted' (our progress handler) or PostgreSQL's query_canceled (57014)."""
    return "interrupted" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "57014"
