"""SQLite under concurrent writers: a unit of work that reads before it writes (storing an upload
checks its patient first) must wait for the write lock, not be refused with "database is locked"
when another connection commits between its read and its write (WAL's stale-snapshot refusal,
which no busy timeout waits out). Found by `cxr-fhir loadtest`: spurious 503s on $analyze.
Every unit of work (writing) therefore begins IMMEDIATE on SQLite."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import date

import pytest
from litestar.testing import TestClient
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.domain.errors import VersionConflict
from cxr_fhir.records.tables import AuditEvent, Patient
from cxr_fhir.security.clients import authenticate, create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, reading, writing
from cxr_fhir.storage.repositories import PatientRepository


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


@pytest.fixture
def pg_engine(pg_url, settings):
    engine = make_engine(pg_url)
    migrate.upgrade(engine, settings.migrations_dir)
    yield engine
    engine.dispose()


def _new_patient(engine) -> str:
    with writing(engine) as s:
        return PatientRepository(s).create(Patient(
            mrn="LOCK-1", mrn_system="urn:oid:1.2.3", family="Doe", given="Jane", birth_date=date(1970, 5, 1),
            sex="female", er_area="resus", triage_level=2), actor="test").id


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    """Runs ``fn`` in a thread; the dict gets its "result" or its "error"."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as exc:  # handed to the test
            out["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_postgresql_writers_of_one_row_queue_and_none_is_lost(pg_engine):
    """What IMMEDIATE gives SQLite, the row lock gives PostgreSQL: a unit of work that reads a row and then
    writes it holds the row from its read until it commits; a second writer waits, then sees the first
    one's version: without an expected version it builds on it (nothing lost), with the stale one it is
    refused (VersionConflict), never a silent overwrite. A reading unit is blocked by neither."""
    pid = _new_patient(pg_engine)

    def blind_update():
        with writing(pg_engine) as s:
            return PatientRepository(s).update(pid, {"er_area": "minors"}, actor="b").version_id

    def stale_update():
        with writing(pg_engine) as s:
            return PatientRepository(s).update(pid, {"given": "Stale"}, actor="c", expected_version=1).version_id

    with writing(pg_engine) as s:
        repo = PatientRepository(s)
        assert repo.get_for_update(pid).version_id == 1  # read first, then write, as the services do
        blind, blind_out = _in_thread(blind_update)
        stale, stale_out = _in_thread(stale_update)
        time.sleep(0.5)
        assert blind.is_alive() and stale.is_alive()  # both wait for the row, neither slips in between
        started = time.monotonic()
        with reading(pg_engine) as r:  # a reader is not blocked by the held row, and sees only committed data
            assert r.exec(select(Patient.family, Patient.version_id).where(Patient.id == pid)).one() == ("Doe", 1)
        assert time.monotonic() - started < 2
        repo.update(pid, {"family": "First"}, actor="a", expected_version=1)
    blind.join(timeout=30)
    stale.join(timeout=30)
    assert not blind.is_alive() and not stale.is_alive()
    assert "error" not in blind_out, blind_out
    assert isinstance(stale_out.get("error"), VersionConflict), stale_out
    with reading(pg_engine) as s:
        final = PatientRepository(s).get(pid)
        history = [v.version_id for v in PatientRepository(s).history(pid)]
    assert (final.family, final.er_area, final.given) == ("First", "minors", "Jane")  # both writes kept
    assert final.version_id == blind_out["result"] == 3 and history == [3, 2, 1]


def test_postgresql_open_reading_unit_does_not_block_a_writer(pg_engine):
    pid = _new_patient(pg_engine)
    with reading(pg_engine) as r:
        assert PatientRepository(r).get(pid).version_id == 1  # an open transaction that has read the row
        writer, out = _in_thread(lambda: _rename(pg_engine, pid))
        writer.join(timeout=5)
        assert not writer.is_alive() and out == {"result": 2}


def _rename(engine, pid: str) -> int:
    with writing(engine) as s:
        return PatientRepository(s).update(pid, {"family": "Renamed"}, actor="w").version_id


# -- the FHIR API reads without SQLite's write lock -------------------------------------------------

FHIR = "application/fhir+json"


@pytest.fixture
def fhir_app(tmp_path):
    """(TestClient, bearer token, patient id, database file) for an app on a SQLite file."""
    db = tmp_path / "api.db"
    settings = Settings(runtime_dir=tmp_path / "var", database_url=f"sqlite:///{db}", load_models=False,
                        _env_file=None)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        token = create_client(s, "reader", ["system/*.*"], actor="test")[1]
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        made = client.post("/fhir/Patient", headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR},
                           json={"resourceType": "Patient", "name": [{"family": "Lock"}], "gender": "male",
                                 "birthDate": "1980-01-01"})
        assert made.status_code == 201, made.text
        yield client, token, made.json()["id"], db


def _hold_write_lock(db) -> sqlite3.Connection:
    raw = sqlite3.connect(db, isolation_level=None, timeout=0, check_same_thread=False)
    raw.execute("BEGIN IMMEDIATE")  # what any writer (an upload, the delivery worker) holds while it works
    return raw


def test_token_check_and_fhir_read_units_run_while_another_connection_holds_the_write_lock(fhir_app):
    client, token, pid, db = fhir_app
    engine = client.app.state.services.engine
    raw = _hold_write_lock(db)
    try:
        started = time.monotonic()
        with reading(engine) as s:
            assert authenticate(s, token).name == "reader"
            assert PatientRepository(s).get(pid).family == "Lock"
        assert time.monotonic() - started < 2  # a writing unit would wait out busy_timeout (30 s) here
    finally:
        raw.execute("ROLLBACK")
        raw.close()


def test_fhir_read_does_its_token_check_and_read_while_the_write_lock_is_held(fhir_app):
    """GET /fhir/Patient/<id> authenticates and reads while another connection holds the write lock;
    only its audit event, a write, waits for the lock, and the answer follows as soon as it is free."""
    client, token, pid, db = fhir_app
    engine = client.app.state.services.engine
    done: list[str] = []  # statements that have finished, in order
    waiting = threading.Event()

    def before(conn, cursor, statement, *_):
        if statement.startswith("BEGIN IMMEDIATE"):
            waiting.set()  # the audit's unit of work asks for the lock

    def after(conn, cursor, statement, *_):
        done.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    raw = _hold_write_lock(db)
    try:
        get, out = _in_thread(lambda: client.get(f"/fhir/Patient/{pid}",
                                                 headers={"Authorization": f"Bearer {token}", "Accept": FHIR}))
        assert waiting.wait(timeout=5), f"the GET did not reach its audit write: {done}"
        under_lock = list(done)
        assert any("FROM api_client" in q for q in under_lock), under_lock  # the token was checked
        assert any("FROM fhir_resource" in q or "FROM patient" in q for q in under_lock), under_lock  # read
        assert not any(q.startswith("BEGIN IMMEDIATE") for q in under_lock)
        assert get.is_alive()  # the audit event waits for the lock
    finally:
        raw.execute("ROLLBACK")
        raw.close()
        released = time.monotonic()
    get.join(timeout=30)
    event.remove(engine, "before_cursor_execute", before)
    event.remove(engine, "after_cursor_execute", after)
    assert time.monotonic() - released < 2
    response = out["result"]
    assert response.status_code == 200 and response.json()["name"][0]["family"] == "Lock"
    with reading(engine) as s:
        reads = s.exec(select(AuditEvent).where(AuditEvent.subtype == "read", AuditEvent.entity_id == pid)).all()
    assert [(e.agent_id, e.outcome) for e in reads] == [("reader", "0")]
