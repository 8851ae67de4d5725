"""SQLite under concurrent writers: a unit of work that reads before it writes (storing an upload
checks its patient first) must wait for the write lock, not be refused with "database is locked"
when another connection commits between its read and its write (WAL's stale-snapshot refusal,
which no busy timeout waits out). Found by `cxr-fhir loadtest`: spurious 503s on $analyze.
Every unit of work (writing) therefore begins IMMEDIATE on SQLite."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from cxr_fhir.storage.db import make_engine, writing


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    with writing(engine) as s:
        s.exec(text("CREATE TABLE t (x INTEGER)"))
    yield engine
    engine.dispose()


def _other_writer(engine) -> None:
    with writing(engine) as s:
        s.exec(text("INSERT INTO t VALUES (1)"))


def test_a_deferred_read_then_write_is_refused_when_another_commits_between(sqlite_engine):
    """Why writing begins IMMEDIATE, shown on a plain (deferred) session."""
    with pytest.raises(OperationalError, match="database is locked"):
        with Session(sqlite_engine) as s:
            s.exec(text("SELECT count(*) FROM t")).one()
            _other_writer(sqlite_engine)  # commits at once: we hold no lock yet
            s.exec(text("INSERT INTO t VALUES (2)"))
            s.commit()


def test_a_write_unit_holds_the_lock_from_its_start_and_the_other_writer_waits(sqlite_engine):
    other = threading.Thread(target=_other_writer, args=(sqlite_engine,))
    with writing(sqlite_engine) as s:
        s.exec(text("SELECT count(*) FROM t")).one()
        other.start()  # blocks on the lock (busy timeout) instead of slipping in between
        time.sleep(0.3)
        assert other.is_alive()
        s.exec(text("INSERT INTO t VALUES (2)"))
    other.join(timeout=30)
    assert not other.is_alive()
    with writing(sqlite_engine) as s:
        assert sorted(r[0] for r in s.exec(text("SELECT x FROM t")).all()) == [1, 2]


def test_units_of_work_on_postgresql_are_plain_transactions(pg_url):
    engine = make_engine(pg_url)
    try:
        with writing(engine) as s:
            assert s.exec(text("SELECT 1")).one()[0] == 1
    finally:
        engine.dispose()
