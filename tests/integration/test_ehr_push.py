"""EHR push against a real FHIR server (sekmet-fhir): delivered once, through outages, restarts,
rejections, SMART Backend Services, and two workers on one PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import TestClient
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.fhir.mapping import OBSERVATION_ID_SYSTEM, REPORT_ID_SYSTEM
from cxr_fhir.outbound.ehr_auth import Auth
from cxr_fhir.outbound.ehr_client import EhrClient
from cxr_fhir.outbound.worker import DeliveryWorker, Policy
from cxr_fhir.records.tables import AuditEvent, OutboxDelivery
from cxr_fhir.records.types import utcnow
from cxr_fhir.security.clients import create_client
from cxr_fhir.services.outbox import OutboxService
from cxr_fhir.services.reports import ReportService
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.image_store import ImageStore
from support.ehr_server import EhrServer, ehr, own_ehr, require_sekmet  # noqa: F401 (fixtures)
from support.reports import MRN_SYSTEM, make_report

CLI = str(Path(sys.executable).parent / "cxr-fhir")
FAST = Policy(retry_base_s=0.2, retry_max_s=1.0, lease=timedelta(seconds=30), poll_s=0.1)


@pytest.fixture
def sqlite_engine(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(eng, PROJECT_ROOT / "migrations")
    yield eng
    eng.dispose()


@pytest.fixture
def images(tmp_path):
    return ImageStore(tmp_path / "images")


def _worker(engine, images, base_url, policy=FAST, auth=None, worker_id=None):
    return DeliveryWorker(engine, images, EhrClient(base_url, auth or Auth(), timeout_s=10), policy, worker_id)


def _rows(engine) -> list[OutboxDelivery]:
    with Session(engine) as s:
        return list(s.exec(select(OutboxDelivery).order_by(OutboxDelivery.created_at)).all())


def _deliveries_audited(engine, outcome=None) -> list[AuditEvent]:
    with Session(engine) as s:
        stmt = select(AuditEvent).where(AuditEvent.subtype == "delivery")
        if outcome:
            stmt = stmt.where(AuditEvent.outcome == outcome)
        return list(s.exec(stmt).all())


def _drain_until(worker, engine, done, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.drain()
        if done():
            return
        time.sleep(0.1)
    raise AssertionError(f"not done within {timeout_s}s: "
                         f"{[(r.status, r.attempts, r.last_error) for r in _rows(engine)]}")


def _counts(ehr: EhrServer, made) -> dict[str, int]:
    """How many of each resource the EHR holds for this report, found by business identifier."""
    return {
        "Patient": len(ehr.by_identifier("Patient", MRN_SYSTEM, made.mrn)),
        "ImagingStudy": len(ehr.by_identifier("ImagingStudy", "urn:dicom:uid", f"urn:oid:{made.study_uid}")),
        "Observation": sum(len(ehr.by_identifier("Observation", OBSERVATION_ID_SYSTEM, f"{made.analysis_id}-{i}"))
                           for i in (1, 2, 3)),
        "DiagnosticReport": len(ehr.by_identifier("DiagnosticReport", REPORT_ID_SYSTEM, made.report_id)),
    }


ONCE = {"Patient": 1, "ImagingStudy": 1, "Observation": 3, "DiagnosticReport": 1}


def test_report_pushed_with_every_reference_resolvable(engine, ehr, images):
    made = make_report(engine, images)
    assert _worker(engine, images, ehr.base_url).drain() == 1

    status = OutboxService(engine).status_for_report(made.report_id)
    assert (status.status, status.fhir_code, status.attempts, status.last_error) == ("delivered", "delivered", 1, None)
    assert _counts(ehr, made) == ONCE
    [dr] = ehr.by_identifier("DiagnosticReport", REPORT_ID_SYSTEM, made.report_id)
    [patient] = ehr.by_identifier("Patient", MRN_SYSTEM, made.mrn)
    [study] = ehr.by_identifier("ImagingStudy", "urn:dicom:uid", f"urn:oid:{made.study_uid}")
    assert dr["subject"]["reference"] == f"Patient/{patient['id']}"
    assert dr["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert study["subject"]["reference"] == f"Patient/{patient['id']}"
    assert dr["presentedForm"][0]["contentType"] == "image/png" and dr["presentedForm"][0]["data"]
    assert len(dr["result"]) == 3
    for ref in dr["result"]:
        obs = ehr.read(ref["reference"])
        assert obs is not None, ref
        assert obs["subject"]["reference"] == f"Patient/{patient['id']}"
        assert obs["partOf"] == [{"reference": f"ImagingStudy/{study['id']}"}]
        assert ehr.read(obs["device"]["reference"])["resourceType"] == "Device"
    # What we stored are the EHR's own ids, from its transaction-response.
    assert f"DiagnosticReport/{dr['id']}" in status.ehr_ids and f"Patient/{patient['id']}" in status.ehr_ids
    [event] = _deliveries_audited(engine)
    assert (event.action, event.outcome, event.agent_type, event.entity_type, event.entity_id) == (
        "E", "0", "system", "DiagnosticReport", made.report_id)

    # The doctor confirms: the new version replaces the old one in the EHR, nothing is duplicated.
    with writing(engine) as s:
        ReportService(destinations=["ehr"]).confirm(s, made.report_id, actor="dr.a", conclusion="Small effusion.")
    assert OutboxService(engine).status_for_report(made.report_id).fhir_code == "pending"
    assert _worker(engine, images, ehr.base_url).drain() == 1
    assert _counts(ehr, made) == ONCE
    [dr] = ehr.by_identifier("DiagnosticReport", REPORT_ID_SYSTEM, made.report_id)
    assert (dr["status"], dr["conclusion"]) == ("final", "Small effusion.")
    assert len(ehr.history(f"DiagnosticReport/{dr['id']}")) == 2


def test_only_the_newest_version_goes_out(sqlite_engine, ehr, images):
    made = make_report(sqlite_engine, images)
    reports = ReportService(destinations=["ehr"])
    with writing(sqlite_engine) as s:
        reports.confirm(s, made.report_id, actor="dr.a")
    with writing(sqlite_engine) as s:
        reports.amend(s, made.report_id, "Amended: no effusion.", actor="dr.a")
    assert [r.report_version for r in _rows(sqlite_engine)] == [1, 2, 3]

    worker = _worker(sqlite_engine, images, ehr.base_url)
    assert worker.drain() == 1  # only version 3 is ever claimed
    rows = {r.report_version: r for r in _rows(sqlite_engine)}
    assert [rows[v].status for v in (1, 2, 3)] == ["delivered"] * 3
    assert rows[1].ehr_response == rows[2].ehr_response == {"superseded_by_version": 3}
    assert rows[1].attempts == rows[2].attempts == 0 and rows[3].attempts == 1
    assert len(_deliveries_audited(sqlite_engine)) == 1
    [dr] = ehr.by_identifier("DiagnosticReport", REPORT_ID_SYSTEM, made.report_id)
    assert (dr["status"], dr["conclusion"]) == ("amended", "Amended: no effusion.")
    assert len(ehr.history(f"DiagnosticReport/{dr['id']}")) == 1


def test_ehr_down_then_back_delivers_exactly_once(sqlite_engine, own_ehr, images):
    made = make_report(sqlite_engine, images)  # the EHR is not running yet
    worker = _worker(sqlite_engine, images, own_ehr.base_url)
    for _ in range(3):
        worker.drain()
        time.sleep(0.3)
    [row] = _rows(sqlite_engine)
    assert row.status == "pending" and row.attempts >= 2
    assert row.last_error == "network error: ConnectError"
    assert row.next_attempt_at > row.created_at
    assert {e.outcome for e in _deliveries_audited(sqlite_engine)} == {"8"}

    own_ehr.start()
    _drain_until(worker, sqlite_engine, lambda: _rows(sqlite_engine)[0].status == "delivered")
    assert _counts(own_ehr, made) == ONCE

    # Down again while the doctor confirms; back with the same data: still one of everything.
    own_ehr.stop()
    with writing(sqlite_engine) as s:
        ReportService(destinations=["ehr"]).confirm(s, made.report_id, actor="dr.a")
    worker.drain()
    assert OutboxService(sqlite_engine).status_for_report(made.report_id).status == "pending"
    own_ehr.start()
    _drain_until(worker, sqlite_engine, lambda: all(r.status == "delivered" for r in _rows(sqlite_engine)))
    assert _counts(own_ehr, made) == ONCE
    [dr] = own_ehr.by_identifier("DiagnosticReport", REPORT_ID_SYSTEM, made.report_id)
    assert dr["status"] == "final"
    assert len(_deliveries_audited(sqlite_engine, outcome="0")) == 2


def test_crashed_workers_claims_expire_and_nothing_is_lost(sqlite_engine, ehr, images):
    made = [make_report(sqlite_engine, images) for _ in range(3)]
    short = Policy(retry_base_s=0.2, retry_max_s=1.0, lease=timedelta(seconds=1), poll_s=0.1)
    crashed = _worker(sqlite_engine, images, ehr.base_url, short, worker_id="crashed")
    claimed = crashed.claim()  # ... and the process dies before sending
    assert claimed is not None

    successor = _worker(sqlite_engine, images, ehr.base_url, short, worker_id="successor")
    assert successor.drain() == 2  # the claimed one is not touched while its lease runs
    time.sleep(1.2)
    assert successor.drain() == 1
    assert all(r.status == "delivered" and r.attempts == 1 for r in _rows(sqlite_engine))
    assert {e.agent_id for e in _deliveries_audited(sqlite_engine)} == {"successor"}
    # The dead worker's late answer would not count twice either: its claim is gone.
    assert crashed.deliver(claimed) == "delivered"
    assert len(_deliveries_audited(sqlite_engine)) == 3
    for m in made:
        assert _counts(ehr, m) == ONCE


def _cli_env(tmp_path, db_url, base_url, **extra) -> dict[str, str]:
    return {**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var"), "CXR_DATABASE_URL": db_url,
            "CXR_IMAGE_STORE_DIR": str(tmp_path / "images"), "CXR_LOAD_MODELS": "false",
            "CXR_EHR_BASE_URL": base_url, "CXR_EHR_RETRY_BASE_S": "0.2", "CXR_EHR_RETRY_MAX_S": "1",
            "CXR_EHR_POLL_S": "0.1", **extra}


def test_worker_process_killed_while_pending_then_restarted(tmp_path, sqlite_engine, own_ehr, images):
    made = [make_report(sqlite_engine, images) for _ in range(4)]
    # A worker killed mid-attempt leaves that row claimed until its lease runs out: keep it short.
    env = _cli_env(tmp_path, str(sqlite_engine.url), own_ehr.base_url, CXR_EHR_LEASE_S="2")
    proc = subprocess.Popen([CLI, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not all(r.attempts >= 1 for r in _rows(sqlite_engine)):  # EHR down: every one failed once
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert all(r.status == "pending" for r in _rows(sqlite_engine))

    own_ehr.start()
    done = subprocess.run([CLI, "worker", "--once"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # --once handles what is due now; anything waiting out a back-off is due a moment later.
    deadline = time.monotonic() + 30
    while not all(r.status == "delivered" for r in _rows(sqlite_engine)):
        assert time.monotonic() < deadline, [(r.status, r.last_error) for r in _rows(sqlite_engine)]
        subprocess.run([CLI, "worker", "--once"], env=env, capture_output=True, text=True, timeout=120)
        time.sleep(0.3)
    for m in made:
        assert _counts(own_ehr, m) == ONCE
    assert "Testperson" not in done.stderr and made[0].mrn not in done.stderr  # no PHI in the logs


def test_rejected_bundle_is_dead_lettered_with_the_reason_and_retried_by_hand(tmp_path, sqlite_engine, ehr, images):
    made = make_report(sqlite_engine, images)
    # The EHR holds two records for this MRN: the conditional create cannot choose and refuses (412).
    import httpx
    for _ in range(2):
        httpx.post(f"{ehr.base_url}/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": MRN_SYSTEM, "value": made.mrn}]},
            headers={"Content-Type": "application/fhir+json"}).raise_for_status()
    worker = _worker(sqlite_engine, images, ehr.base_url)
    assert worker.drain() == 1
    [row] = _rows(sqlite_engine)
    assert (row.status, row.attempts) == ("dead", 1)  # at once, no retries
    assert row.last_error.startswith("HTTP 412: ") and "matched 2 resources" in row.last_error
    assert row.ehr_response["outcome"]["resourceType"] == "OperationOutcome"
    status = OutboxService(sqlite_engine).status_for_report(made.report_id)
    assert status.fhir_code == "failed" and "matched 2" in status.last_error

    env = _cli_env(tmp_path, str(sqlite_engine.url), ehr.base_url)
    listed = subprocess.run([CLI, "outbox", "list", "--status", "dead"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert row.id in listed.stdout and "HTTP 412" in listed.stdout and "matched 2 resources" in listed.stdout

    # The hospital merges its duplicate; an operator retries from the command line.
    dup = ehr.by_identifier("Patient", MRN_SYSTEM, made.mrn)[1]
    httpx.delete(f"{ehr.base_url}/Patient/{dup['id']}").raise_for_status()
    retried = subprocess.run([CLI, "outbox", "retry", row.id], env=env, capture_output=True, text=True, timeout=60)
    assert retried.returncode == 0 and "queued" in retried.stdout, retried.stderr
    assert worker.drain() == 1
    assert OutboxService(sqlite_engine).status_for_report(made.report_id).status == "delivered"
    assert _counts(ehr, made) == ONCE
    again = subprocess.run([CLI, "outbox", "retry", row.id], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already delivered" in again.stderr


def _rsa_pem(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_smart_backend_services(tmp_path, sqlite_engine, images):
    require_sekmet()
    good, bad = _rsa_pem(tmp_path / "good.pem"), _rsa_pem(tmp_path / "bad.pem")
    server = EhrServer(tmp_path / "ehr", auth={
        "types": ["smart"], "token_lifetime": 600,
        "smart_clients": [{"client_id": "cxr-fhir", "public_key_path": str(good.with_suffix(".pub")),
                           "scopes": "system/*.*"}]})
    server.start()
    try:
        import httpx
        assert httpx.post(server.base_url, json={"resourceType": "Bundle", "type": "transaction"}).status_code == 401

        def client(key: Path) -> EhrClient:
            # The token endpoint is discovered from <base>/.well-known/smart-configuration.
            return EhrClient.from_settings(Settings(
                runtime_dir=tmp_path / "var", _env_file=None, ehr_base_url=server.base_url, ehr_auth="smart",
                ehr_client_id="cxr-fhir", ehr_private_key_path=key, ehr_key_id="k1", ehr_timeout_s=10))

        refused = client(bad)
        worker = DeliveryWorker(sqlite_engine, images, refused, FAST)
        made = make_report(sqlite_engine, images)
        assert worker.drain() == 1
        [row] = _rows(sqlite_engine)
        # A key problem is configuration, not the report's fault: kept pending, the reason shown.
        assert row.status == "pending" and row.attempts == 1
        assert "SMART token endpoint refused (HTTP 401): invalid_client" in row.last_error
        assert "verification failed" in row.last_error
        env = _cli_env(tmp_path, str(sqlite_engine.url), server.base_url)
        listed = subprocess.run([CLI, "outbox", "list"], env=env, capture_output=True, text=True, timeout=60)
        assert "invalid_client" in listed.stdout

        accepted = client(good)
        worker = DeliveryWorker(sqlite_engine, images, accepted, FAST)
        _drain_until(worker, sqlite_engine, lambda: _rows(sqlite_engine)[0].status == "delivered")
        token = accepted.auth._token
        make_report(sqlite_engine, images)
        _drain_until(worker, sqlite_engine, lambda: all(r.status == "delivered" for r in _rows(sqlite_engine)))
        assert accepted.auth._token == token  # cached, not fetched per delivery
        assert OutboxService(sqlite_engine).status_for_report(made.report_id).ehr_ids
    finally:
        server.stop()


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_send_one_row_twice(pg_url, ehr, images):
    engine = make_engine(pg_url)
    migrate.upgrade(engine, PROJECT_ROOT / "migrations")
    made = [make_report(engine, images) for _ in range(16)]
    engines = [make_engine(pg_url) for _ in range(2)]
    workers = [_worker(e, images, ehr.base_url, worker_id=f"w{i}") for i, e in enumerate(engines)]
    start = threading.Barrier(2)
    handled: dict[str, int] = {}

    def run(w):
        start.wait()
        handled[w.worker_id] = w.drain()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    rows = _rows(engine)
    assert all(r.status == "delivered" for r in rows), [(r.status, r.last_error) for r in rows]
    assert sum(handled.values()) == 16 and all(handled.values()), handled  # both took part
    events = _deliveries_audited(engine, outcome="0")
    assert sorted(e.entity_id for e in events) == sorted(m.report_id for m in made)  # one success per report
    for m in made:
        [dr] = ehr.by_identifier("DiagnosticReport", REPORT_ID_SYSTEM, m.report_id)
        assert len(ehr.history(f"DiagnosticReport/{dr['id']}")) == 1  # the EHR saw it once
    for e in [engine, *engines]:
        e.dispose()


@pytest.mark.postgres
def test_concurrent_claims_on_postgresql_are_disjoint(pg_url, images):
    engine = make_engine(pg_url)
    migrate.upgrade(engine, PROJECT_ROOT / "migrations")
    for _ in range(10):
        make_report(engine, images)
    engines = [make_engine(pg_url) for _ in range(4)]
    workers = [_worker(e, images, "http://127.0.0.1:9/fhir", worker_id=f"w{i}") for i, e in enumerate(engines)]
    claims: dict[str, list[str]] = {w.worker_id: [] for w in workers}
    start = threading.Barrier(len(workers))

    def run(w):
        start.wait()
        while (row := w.claim()) is not None:
            claims[w.worker_id].append(row)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [r for rows in claims.values() for r in rows]
    assert len(everything) == len(set(everything)) == 10
    with Session(engine) as s:
        assert {r.id: r.claimed_by for r in s.exec(select(OutboxDelivery))} == {
            r: w for w, rows in claims.items() for r in rows}
    for e in [engine, *engines]:
        e.dispose()


def test_app_runs_the_worker_and_ready_shows_the_backlog(tmp_path, ehr, images):
    settings = Settings(runtime_dir=tmp_path / "var", load_models=False, _env_file=None, ehr_base_url=ehr.base_url,
                        image_store_dir=tmp_path / "images", ehr_poll_s=0.1)
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    made = make_report(engine, images)
    with TestClient(app=create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while OutboxService(engine).status_for_report(made.report_id).status != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = client.get("/ready")
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["ehr_outbox"] == {"pending": 0, "dead": 0}
        assert r.json()["checks"]["ehr_push"].startswith("enabled")
        # The FHIR API shows the delivery status on the report, without a new report version.
        with writing(engine) as s:
            token = create_client(s, "ehr-status", ["system/DiagnosticReport.read"], actor="t")[1]
        auth = {"Authorization": f"Bearer {token}"}
        dr = client.get(f"/fhir/DiagnosticReport/{made.report_id}", headers=auth).json()
        assert dr["extension"] == [{"url": "urn:cxr-fhir:ehr-delivery-status", "valueCode": "delivered"}]
        assert dr["meta"]["versionId"] == "1"
        found = client.get(f"/fhir/DiagnosticReport?_id={made.report_id}", headers=auth).json()
        assert found["entry"][0]["resource"]["extension"][0]["valueCode"] == "delivered"
    assert _counts(ehr, made) == ONCE
    engine.dispose()


def test_a_worker_whose_lease_ran_out_does_not_settle_another_workers_claim(sqlite_engine, images):
    from cxr_fhir.outbound.errors import TransientError

    made = make_report(sqlite_engine, images)
    slow, other = (_worker(sqlite_engine, images, "http://127.0.0.1:9", worker_id=w) for w in ("slow", "other"))
    assert slow.claim() == made.outbox_id
    with writing(sqlite_engine) as s:  # the slow worker's send outlived its lease
        s.get(OutboxDelivery, made.outbox_id).claimed_until = utcnow() - timedelta(seconds=1)
    assert other.claim() == made.outbox_id
    assert slow._record(made.outbox_id, made.report_id, 1, None, TransientError("timed out")) == "pending"
    row = _rows(sqlite_engine)[0]
    assert (row.claimed_by, row.attempts, row.last_error) == ("other", 0, None)
