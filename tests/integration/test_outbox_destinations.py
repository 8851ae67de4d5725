"""One outbox, several destinations (EHR, PACS, RIS), on SQLite and PostgreSQL: what is queued per
report version, a worker claims only the destinations it has a sender for, the order of versions is
kept per destination without one destination holding back another, and two workers on one
PostgreSQL never send a row twice. The RIS is a real MLLP receiver (tests/support/mllp.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cxr_fhir.domain.vocabulary import Destination
from cxr_fhir.outbound.ehr import EhrSender
from cxr_fhir.outbound.ehr_auth import Auth
from cxr_fhir.outbound.ehr_client import EhrClient
from cxr_fhir.outbound.ris import RisSender, control_id_for
from cxr_fhir.outbound.senders import build_senders
from cxr_fhir.outbound.worker import DeliveryWorker, Policy
from cxr_fhir.records.tables import AuditEvent, OutboxDelivery, Report, Study
from cxr_fhir.services.outbox import OutboxService
from cxr_fhir.services.reports import ReportService, StudyService, enqueue_deliveries
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.fhir.delivery import newest_statuses
from cxr_fhir.storage.image_store import ImageStore
from support.mllp import MllpReceiver, mllp  # noqa: F401 (fixture)
from support.reports import make_report

CLI = str(Path(sys.executable).parent / "cxr-fhir")
FAST = Policy(retry_base_s=0.1, retry_max_s=0.3, lease=timedelta(seconds=30), poll_s=0.05)
ALL = (Destination.EHR, Destination.PACS, Destination.RIS)


@pytest.fixture
def images(tmp_path):
    return ImageStore(tmp_path / "images")


def _report(engine, images, *, dicom: bool = False, destinations=ALL) -> str:
    """A report queued as the analysis service queues it; ``dicom``: its study came as DICOM."""
    made = make_report(engine, images, queue=False)
    with writing(engine) as s:
        if dicom:
            s.get(Study, made.study_id).media_type = "application/dicom"
            s.flush()
        enqueue_deliveries(s, s.get(Report, made.report_id), destinations)
    return made.report_id


def _rows(engine, report_id: str | None = None) -> list[OutboxDelivery]:
    with Session(engine) as s:
        stmt = select(OutboxDelivery)
        if report_id:
            stmt = stmt.where(OutboxDelivery.report_id == report_id)
        return list(s.exec(stmt.order_by(OutboxDelivery.report_version, OutboxDelivery.destination)).all())


def _ris_worker(engine, images, receiver: MllpReceiver, worker_id: str | None = None) -> DeliveryWorker:
    return DeliveryWorker(engine, images, {Destination.RIS: RisSender("127.0.0.1", receiver.port, 5.0)}, FAST,
                          worker_id)


def test_rows_per_destination_and_report_version(engine, images):
    png = _report(engine, images)
    dicom = _report(engine, images, dicom=True)
    # The PACS hears only of studies it holds the film of.
    assert [(r.report_version, r.destination) for r in _rows(engine, png)] == [(1, "ehr"), (1, "ris")]
    assert [(r.report_version, r.destination) for r in _rows(engine, dicom)] == [(1, "ehr"), (1, "pacs"), (1, "ris")]
    with writing(engine) as s:
        ReportService(ALL).confirm(s, dicom, actor="dr.grey")
    with writing(engine) as s:
        study_id = s.get(Report, dicom).study_id
        StudyService(ALL).delete(s, study_id, actor="dr.grey")
    # Confirmed: every destination hears of version 2; cancelled: not the PACS (no retraction in DICOM).
    assert [(r.report_version, r.destination) for r in _rows(engine, dicom)] == [
        (1, "ehr"), (1, "pacs"), (1, "ris"), (2, "ehr"), (2, "pacs"), (2, "ris"), (3, "ehr"), (3, "ris")]
    statuses = OutboxService(engine).statuses_for_report(dicom)
    assert {d: s.report_version for d, s in statuses.items()} == {
        Destination.EHR: 3, Destination.PACS: 2, Destination.RIS: 3}
    assert OutboxService(engine).status_for_report(dicom).destination == Destination.EHR


def test_a_worker_claims_only_its_destinations(engine, images, mllp):
    report_id = _report(engine, images, dicom=True)
    ris_only = _ris_worker(engine, images, mllp)
    assert ris_only.drain() == 1
    rows = {r.destination: r for r in _rows(engine, report_id)}
    assert rows["ris"].status == "delivered" and rows["ris"].ehr_response["ack"] == "AA"
    for other in ("ehr", "pacs"):  # untouched: never claimed, never tried
        assert (rows[other].status, rows[other].attempts, rows[other].claimed_by) == ("pending", 0, None)
    assert ris_only.claim() is None
    assert mllp.control_ids() == {control_id_for(rows["ris"].id): 1}
    # The DiagnosticReport's urn:cxr-fhir:ehr-delivery-status speaks of the EHR only.
    with Session(engine) as s:
        assert newest_statuses(s, [report_id]) == {report_id: "pending"}
    with pytest.raises(ValueError):
        DeliveryWorker(engine, images, {}, FAST)


def test_order_is_kept_per_destination_and_destinations_do_not_wait_for_each_other(engine, images, mllp):
    report_id = _report(engine, images, destinations=(Destination.EHR, Destination.RIS))
    with writing(engine) as s:
        ReportService((Destination.EHR, Destination.RIS)).confirm(s, report_id, actor="dr.grey")
    ehr = DeliveryWorker(engine, images, {Destination.EHR: EhrSender(EhrClient("http://127.0.0.1:9", Auth()))},
                         FAST, "ehr-worker")
    ris_a, ris_b = _ris_worker(engine, images, mllp, "ris-a"), _ris_worker(engine, images, mllp, "ris-b")
    # Only the newest version of each destination is claimable; the RIS's claim does not hold the EHR's.
    claimed_ris = ris_a.claim()
    claimed_ehr = ehr.claim()
    by_id = {r.id: r for r in _rows(engine, report_id)}
    assert (by_id[claimed_ris].destination, by_id[claimed_ris].report_version) == ("ris", 2)
    assert (by_id[claimed_ehr].destination, by_id[claimed_ehr].report_version) == ("ehr", 2)
    # A version 3 queued while version 2 is in flight to the RIS waits for it (never overtakes).
    with writing(engine) as s:
        ReportService((Destination.RIS,)).amend(s, report_id, "Amended: small effusion.", actor="dr.grey")
    assert ris_b.claim() is None
    # The claimed version 2 is not sent after all: a newer one exists by the time it would go.
    assert ris_a.deliver(claimed_ris) == "delivered"
    assert ris_b.drain() == 1  # now version 3
    ris = [r for r in _rows(engine, report_id) if r.destination == "ris"]
    assert [(r.report_version, r.status, r.attempts) for r in ris] == [
        (1, "delivered", 0), (2, "delivered", 0), (3, "delivered", 1)]
    assert ris[0].ehr_response == ris[1].ehr_response == {"superseded_by_version": 3}  # settled, never sent
    assert mllp.control_ids() == {control_id_for(ris[2].id): 1}  # the RIS heard only of the newest
    ehr_rows = [r for r in _rows(engine, report_id) if r.destination == "ehr"]
    assert [(r.report_version, r.status, r.attempts) for r in ehr_rows] == [(1, "pending", 0), (2, "pending", 0)]


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_send_one_row_twice(pg_url, images, mllp):
    engine = make_engine(pg_url)
    migrate.upgrade(engine, PROJECT_ROOT / "migrations")
    reports = [_report(engine, images, destinations=(Destination.RIS,)) for _ in range(16)]
    engines = [make_engine(pg_url) for _ in range(2)]
    workers = [_ris_worker(e, images, mllp, f"w{i}") for i, e in enumerate(engines)]
    start = threading.Barrier(2)
    handled: dict[str, int] = {}

    def run(w: DeliveryWorker) -> None:
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
    expected = {control_id_for(r.id): 1 for r in rows}
    assert len(expected) == 16 and mllp.control_ids() == expected  # the RIS got each row once
    with Session(engine) as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.subtype == "delivery", AuditEvent.outcome == "0")).all()
    assert sorted(e.entity_id for e in events) == sorted(reports)
    for e in [engine, *engines]:
        e.dispose()


def test_cli_lists_the_destination_and_composes_the_senders_configured(tmp_path, images, mllp):
    """`cxr-fhir worker` runs one worker with a sender per configured destination; `outbox list`
    shows (and filters by) the destination."""
    db = tmp_path / "cli.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    migrate.upgrade(engine, PROJECT_ROOT / "migrations")
    report_id = _report(engine, images, dicom=True)
    env = {**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var"), "CXR_DATABASE_URL": f"sqlite:///{db}",
           "CXR_IMAGE_STORE_DIR": str(images.root), "CXR_LOAD_MODELS": "false",
           "CXR_RIS_MLLP_HOST": "127.0.0.1", "CXR_RIS_MLLP_PORT": str(mllp.port)}
    for name in ("CXR_EHR_BASE_URL", "CXR_PACS_AE_TITLE", "CXR_PACS_HOST", "CXR_PACS_PORT", "CXR_PACS_STOW_URL"):
        env.pop(name, None)
    done = subprocess.run([CLI, "worker", "--once"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "handled 1 deliveries" in done.stdout, done.stderr
    listed = subprocess.run([CLI, "outbox", "list"], env=env, capture_output=True, text=True, timeout=60).stdout
    lines = [line.split("\t") for line in listed.strip().splitlines()]
    assert lines[0][:5] == ["id", "destination", "report", "version", "status"]
    assert sorted((cells[1], cells[2], cells[4]) for cells in lines[1:]) == [
        ("ehr", report_id, "pending"), ("pacs", report_id, "pending"), ("ris", report_id, "delivered")]
    only = subprocess.run([CLI, "outbox", "list", "--destination", "pacs"], env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip().splitlines()
    assert len(only) == 2 and only[1].split("\t")[1] == "pacs"
    nothing = {k: v for k, v in env.items() if not k.startswith("CXR_RIS_")}
    refused = subprocess.run([CLI, "worker", "--once"], env=nothing, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no destination is configured" in refused.stderr
    engine.dispose()

    settings = Settings(_env_file=None, runtime_dir=tmp_path / "var", ehr_base_url="http://127.0.0.1:9/fhir",
                        pacs_ae_title="PACS", pacs_host="127.0.0.1", pacs_port=104, ris_mllp_host="127.0.0.1",
                        ris_mllp_port=mllp.port)
    senders = build_senders(settings)
    assert {d: type(s).__name__ for d, s in senders.items()} == {
        Destination.EHR: "EhrSender", Destination.PACS: "PacsSender", Destination.RIS: "RisSender"}
    assert senders[Destination.PACS].not_for_diagnostic_use  # the shipped weights' card: not for clinical use
    for sender in senders.values():
        sender.close()
    assert build_senders(Settings(_env_file=None, runtime_dir=tmp_path / "var")) == {}
