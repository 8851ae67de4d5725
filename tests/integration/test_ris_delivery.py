"""HL7 v2 ORU^R01 to the RIS over MLLP, through the outbox, against a real MLLP receiver on loopback
(tests/support/mllp.py): the ACK codes as HL7 v2.5.1 §2.9 reads them (AA delivered, AR retried,
AE dead-lettered), a RIS down while reports queue, a worker process killed mid-delivery."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.domain.vocabulary import Destination
from cxr_fhir.outbound.ris import RisSender, control_id_for
from cxr_fhir.outbound.worker import DeliveryWorker, Policy
from cxr_fhir.records.tables import AuditEvent, OutboxDelivery, Report
from cxr_fhir.security.users import create_user
from cxr_fhir.services.outbox import OutboxService
from cxr_fhir.services.reports import enqueue_deliveries
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.image_store import ImageStore
from support.mllp import MllpReceiver, mllp  # noqa: F401 (fixture)
from support.outbox import drain_until, outbox_rows
from support.reports import make_report

CLI = str(Path(sys.executable).parent / "cxr-fhir")
FAST = Policy(retry_base_s=0.1, retry_max_s=0.3, lease=timedelta(seconds=30), poll_s=0.05)


@pytest.fixture
def engine(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(eng, PROJECT_ROOT / "migrations")
    yield eng
    eng.dispose()


@pytest.fixture
def images(tmp_path):
    return ImageStore(tmp_path / "images")


def _queued(engine, images, n: int = 1) -> list[str]:
    """n reports queued for the RIS only; their outbox row ids."""
    ids = []
    for _ in range(n):
        made = make_report(engine, images, queue=False)
        with writing(engine) as s:
            [row] = enqueue_deliveries(s, s.get(Report, made.report_id), [Destination.RIS])
            ids.append(row.id)
    return ids


def _worker(engine, images, receiver: MllpReceiver, policy: Policy = FAST, timeout_s: float = 5.0,
            worker_id: str | None = None) -> DeliveryWorker:
    sender = RisSender("127.0.0.1", receiver.port, timeout_s, sending_facility="ER", receiving_application="RIS",
                       receiving_facility="HOSP")
    return DeliveryWorker(engine, images, {Destination.RIS: sender}, policy, worker_id)


def test_aa_is_delivered_once_with_the_message_the_ris_expects(engine, images, mllp):
    [row_id] = _queued(engine, images)
    assert _worker(engine, images, mllp).drain() == 1
    [row] = outbox_rows(engine)
    cid = control_id_for(row_id)
    assert (row.status, row.attempts, row.destination) == ("delivered", 1, "ris")
    assert row.ehr_response["ack"] == "AA" and row.ehr_response["control_id"] == cid
    assert mllp.control_ids() == {cid: 1} and mllp.accepted() == {cid: 1}
    msh = mllp.received[0].text.split("\r")[0].split("|")
    assert (msh[3], msh[4], msh[8], msh[9], msh[11]) == ("ER", "RIS", "ORU^R01^ORU_R01", cid, "2.5.1")
    assert any(seg.startswith("OBX|") for seg in mllp.received[0].text.split("\r"))
    status = OutboxService(engine).statuses_for_report(row.report_id)
    assert list(status) == [Destination.RIS] and status[Destination.RIS].refs == (cid,)
    with Session(engine) as s:
        [event] = s.exec(select(AuditEvent).where(AuditEvent.subtype == "delivery")).all()
    assert event.outcome == "0" and "(ris)" in event.detail


def test_ar_is_retried_with_the_same_message_then_delivered(engine, images, mllp):
    """AR: not processed for a reason unrelated to the message (§2.9.2.2): the same message later."""
    [row_id] = _queued(engine, images)
    mllp.answer_with("AR", "AR", note="RIS database offline")
    worker = _worker(engine, images, mllp)
    drain_until(worker, engine, lambda: outbox_rows(engine)[0].status == "delivered")
    [row] = outbox_rows(engine)
    cid = control_id_for(row_id)
    assert row.attempts == 3 and row.last_error is None
    assert mllp.control_ids() == {cid: 3} and mllp.processed() == {cid: 1} and mllp.accepted() == {cid: 1}
    assert len({r.text for r in mllp.received}) == 1  # byte-for-byte the same message each time


def test_ae_is_dead_lettered_with_the_ris_reason_and_retried_by_hand(engine, images, mllp):
    """AE: the RIS found an error in the message (§2.9.2.2): sending it again would fail again."""
    [row_id] = _queued(engine, images)
    mllp.answer_with("AE", note="Unknown accession number")
    worker = _worker(engine, images, mllp)
    assert worker.drain() == 1
    time.sleep(0.4)
    assert worker.drain() == 0  # a dead letter is not retried by itself
    [row] = outbox_rows(engine)
    assert row.status == "dead" and row.attempts == 1
    assert "HL7 AE" in row.last_error and "Unknown accession number" in row.last_error
    assert row.ehr_response == {"ack": "AE", "control_id": control_id_for(row_id), "text": "Unknown accession number"}
    assert mllp.control_ids() == {control_id_for(row_id): 1}
    delivery = OutboxService(engine).status_for_report(row.report_id, Destination.RIS)
    assert delivery.status == "dead" and "Unknown accession number" in delivery.last_error
    # The RIS is fixed; the operator retries (what `cxr-fhir outbox retry` and the page's button do).
    OutboxService(engine).retry(row_id, actor="test")
    assert worker.drain() == 1
    assert outbox_rows(engine)[0].status == "delivered" and mllp.accepted() == {control_id_for(row_id): 1}


def test_ar_for_an_unsupported_version_is_not_retried(engine, images, mllp):
    """AR with ERR-3 203 (unsupported version id, table 0357): resending the same message cannot help."""
    [row_id] = _queued(engine, images)
    mllp.answer_with("AR", note="Version 2.5.1 not supported")
    mllp.error_code = "203"
    assert _worker(engine, images, mllp).drain() == 1
    [row] = outbox_rows(engine)
    assert row.status == "dead" and "HL7 AR" in row.last_error and row.ehr_response["error_code"] == "203"
    assert mllp.control_ids() == {control_id_for(row_id): 1}


def test_wrong_control_id_and_no_answer_are_transient(engine, images, mllp):
    [row_id] = _queued(engine, images)
    mllp.wrong_control_id = True
    worker = _worker(engine, images, mllp, timeout_s=0.5)
    assert worker.drain() == 1
    row = outbox_rows(engine)[0]
    assert row.status == "pending" and "acknowledged message 'WRONG-ID'" in row.last_error
    mllp.wrong_control_id, mllp.silent = False, True
    time.sleep(0.4)
    assert worker.drain() == 1
    row = outbox_rows(engine)[0]
    assert row.status == "pending" and row.attempts == 2 and "no ACK" in row.last_error
    mllp.silent = False
    drain_until(worker, engine, lambda: outbox_rows(engine)[0].status == "delivered")
    assert mllp.processed() == {control_id_for(row_id): 1}


def test_ris_down_while_20_reports_queue_then_up_each_received_once(engine, images, mllp):
    mllp.stop()  # the RIS is down: connections refused
    row_ids = _queued(engine, images, 20)
    # Back-off long enough that the first round ends before any retry is due.
    worker = _worker(engine, images, mllp, Policy(retry_base_s=3, retry_max_s=3, poll_s=0.05))
    assert worker.drain() == 20
    assert all(r.status == "pending" and r.attempts == 1 and "network error" in r.last_error
               for r in outbox_rows(engine))
    assert mllp.control_ids() == {}
    mllp.start()
    drain_until(worker, engine, lambda: all(r.status == "delivered" for r in outbox_rows(engine)))
    expected = {control_id_for(i): 1 for i in row_ids}
    assert len(expected) == 20
    assert mllp.control_ids() == expected and mllp.accepted() == expected


def test_worker_killed_mid_delivery_then_another_the_ris_processes_it_once(tmp_path, engine, images, mllp):
    """The process dies after the RIS has the message but before the ACK is recorded: the row stays
    claimed until its lease runs out, then the next worker sends the very same message (same
    control id, same bytes), which the RIS recognises as a duplicate."""
    [row_id] = _queued(engine, images)
    cid = control_id_for(row_id)
    mllp.silent = True  # the RIS takes the message and is slow to answer ...
    env = {**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var"), "CXR_DATABASE_URL": str(engine.url),
           "CXR_IMAGE_STORE_DIR": str(tmp_path / "images"), "CXR_LOAD_MODELS": "false",
           "CXR_RIS_MLLP_HOST": "127.0.0.1", "CXR_RIS_MLLP_PORT": str(mllp.port), "CXR_RIS_TIMEOUT_S": "60",
           "CXR_EHR_LEASE_S": "2", "CXR_EHR_POLL_S": "0.1", "CXR_HL7_SENDING_FACILITY": "ER",
           "CXR_HL7_RECEIVING_APPLICATION": "RIS", "CXR_HL7_RECEIVING_FACILITY": "HOSP"}  # as _worker's
    env.pop("CXR_EHR_BASE_URL", None)
    proc = subprocess.Popen([CLI, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert mllp.arrived.wait(60), proc.stderr.read() if proc.poll() is not None else "no message"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # ... and the worker dies waiting
        proc.wait()
    mllp.silent = False
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts, row.claimed_by is not None) == ("pending", 0, True)

    successor = _worker(engine, images, mllp, worker_id="successor")
    assert successor.drain() == 0  # the dead worker's lease still runs
    time.sleep(2.2)
    assert successor.drain() == 1
    [row] = outbox_rows(engine)
    assert (row.status, row.attempts) == ("delivered", 1)
    assert mllp.control_ids() == {cid: 2}  # sent twice: unavoidable once the sender died unanswered
    assert mllp.received[0].text == mllp.received[1].text  # but the very same message
    assert mllp.processed() == {cid: 1} and mllp.accepted() == {cid: 1}  # which the RIS acted on once


def test_result_page_shows_the_ris_line_with_its_reason_and_retry(tmp_path, mllp):
    """The page's line for the RIS: failed with the RIS's reason, Retry (CSRF), pending, delivered."""
    settings = Settings(runtime_dir=tmp_path / "var", load_models=False, _env_file=None, ehr_base_url=None,
                        image_store_dir=tmp_path / "images", ehr_poll_s=3600, ris_mllp_host="127.0.0.1",
                        ris_mllp_port=mllp.port)
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    images = ImageStore(settings.image_store_dir)
    with writing(engine) as s:
        create_user(s, "dr.grey", "correct-horse-battery", "doctor", actor="test")
    [row_id] = _queued(engine, images)
    with Session(engine) as s:
        report = s.get(Report, s.get(OutboxDelivery, row_id).report_id)
    mllp.answer_with("AE", note="Unknown accession number")
    with TestClient(app=create_app(settings)) as client:
        time.sleep(0.3)  # the app's own worker has looked once (nothing due yet? it may take the row) ...
        _worker(engine, images, mllp).drain()  # ... either way the one attempt is made, and AE kills it
        assert outbox_rows(engine)[0].status == "dead"
        token = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"username": "dr.grey", "password": "correct-horse-battery",
                                    "_csrf_token": token}, follow_redirects=False)
        page = client.get(f"/studies/{report.study_id}").text
        line = re.search(r'<div id="ris-status".*?</div>', page, re.S).group(0)
        assert "Failed" in line and "Unknown accession number" in line and 'id="ris-delivery-retry"' in line
        assert 'id="pacs-status"' not in page  # no PACS configured, none queued
        assert "Push disabled" in page  # the EHR's block says what it always said
        csrf = re.search(r'"x-csrftoken": "([^"]+)"', client.get("/").text).group(1)
        url = f"/reports/{report.id}/delivery/retry"
        assert client.post(url, data={"outbox_id": row_id}, headers={"HX-Request": "true"}).status_code == 403
        r = client.post(url, data={"outbox_id": row_id}, headers={"HX-Request": "true", "x-csrftoken": csrf})
        assert r.status_code == 200 and r.text.lstrip().startswith('<div id="ris-status"')
        assert "Pending" in r.text and f'hx-get="/reports/{report.id}/delivery?destination=ris"' in r.text
        _worker(engine, images, mllp).drain()
        partial = client.get(f"/reports/{report.id}/delivery?destination=ris", headers={"HX-Request": "true"}).text
        assert "Delivered" in partial and f"<code>{control_id_for(row_id)}</code>" in partial
        assert "hx-trigger" not in partial
        assert client.get(f"/reports/{report.id}/delivery?destination=fax").status_code == 404
        checks = client.get("/ready").json()["checks"]
        assert checks["outbox"] == {"ris": {"pending": 0, "dead": 0}} and "ehr_outbox" not in checks
    engine.dispose()
