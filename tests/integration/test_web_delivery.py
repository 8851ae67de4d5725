"""EHR delivery on the web pages, against a real FHIR server (sekmet-fhir) and a real database:
the status block on the result page in each state, the badges on the worklist and history cards,
Retry (CSRF, a failed delivery queued again, a refusal shown as a message) and the admin page.

The deliveries are made by a DeliveryWorker the test drains itself, as in test_ehr_push.py; the
app's own worker polls so rarely that it never takes one from under the test.
"""

from __future__ import annotations

import re
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta

import httpx
import pytest
from litestar.testing import TestClient
from pydicom.uid import generate_uid
from sqlmodel import Session, col, select

from cxr_fhir.app import create_app
from cxr_fhir.outbound.ehr_auth import Auth
from cxr_fhir.outbound.ehr_client import EhrClient
from cxr_fhir.outbound.worker import DeliveryWorker, Policy
from cxr_fhir.records.tables import AuditEvent, OutboxDelivery, Patient, Study
from cxr_fhir.security.users import create_user
from cxr_fhir.services.outbox import OutboxService
from cxr_fhir.settings import Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.image_store import ImageStore
from cxr_fhir.storage.repositories import PatientRepository, StudyRepository
from support.ehr_server import ehr, free_port  # noqa: F401 (fixture)
from support.reports import MRN_SYSTEM, make_report

PASSWORD = "correct-horse-battery"
# Retries far in the future: a delivery the worker could not make stays pending while the test looks.
SLOW = Policy(retry_base_s=600, retry_max_s=600, lease=timedelta(seconds=30), poll_s=0.1)


def _settings(tmp_path, ehr_base_url: str | None) -> Settings:
    return Settings(runtime_dir=tmp_path / "var", load_models=False, _env_file=None, ehr_base_url=ehr_base_url,
                    image_store_dir=tmp_path / "images", ehr_poll_s=3600)


@pytest.fixture
def open_app(tmp_path):
    """open_app(ehr_base_url) -> (client, engine, images): the app on a fresh SQLite database with a
    doctor and an admin; ehr_base_url None is push disabled."""
    with ExitStack() as stack:
        def opener(ehr_base_url: str | None):
            settings = _settings(tmp_path, ehr_base_url)
            engine = make_engine(settings.effective_database_url)
            stack.callback(engine.dispose)
            migrate.upgrade(engine, settings.migrations_dir)
            with writing(engine) as s:
                create_user(s, "dr.grey", PASSWORD, "doctor", actor="test")
                create_user(s, "admin", PASSWORD, "admin", actor="test")
            client = stack.enter_context(TestClient(app=create_app(settings)))
            time.sleep(0.3)  # the app's worker has looked once (nothing due) and now sleeps for an hour
            return client, engine, ImageStore(settings.image_store_dir)
        yield opener


def _login(client: TestClient, username: str = "dr.grey") -> str:
    """Logs in and returns the CSRF token htmx sends (from hx-headers on <body>)."""
    token = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post("/login", data={"username": username, "password": PASSWORD, "_csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303
    return re.search(r'"x-csrftoken": "([^"]+)"', client.get("/").text).group(1)


def _drain(engine, images, base_url: str, policy: Policy = SLOW) -> int:
    worker = DeliveryWorker(engine, images, EhrClient(base_url, Auth(), timeout_s=10), policy)
    try:
        return worker.drain()
    finally:
        worker.client.close()


def _status_block(html: str) -> str:
    return re.search(r'<div id="ehr-status".*?</div>\s*</div>|<div id="ehr-status".*', html, re.S).group(0)


def _duplicate_patient_in_ehr(ehr, mrn: str) -> None:
    """Two EHR records for one MRN: the conditional create cannot choose and refuses (HTTP 412)."""
    for _ in range(2):
        httpx.post(f"{ehr.base_url}/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": MRN_SYSTEM, "value": mrn}]},
            headers={"Content-Type": "application/fhir+json"}).raise_for_status()


def test_push_disabled(open_app):
    client, engine, images = open_app(None)
    made = make_report(engine, images, queue=False)
    _login(client)
    page = client.get(f"/studies/{made.study_id}").text
    assert "Push disabled" in page and "hx-trigger" not in _status_block(page)
    assert "EHR:" not in client.get("/").text  # no delivery badges either
    r = client.post(f"/reports/{made.report_id}/delivery/retry", data={"outbox_id": "x"},
                    headers={"HX-Request": "true", "x-csrftoken": _login(client)})
    assert r.status_code == 409 and "push is disabled" in r.text


def test_pending_shows_attempts_next_attempt_and_the_error_and_polls(open_app):
    down = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there: the EHR is down
    client, engine, images = open_app(down)
    made = make_report(engine, images)
    _login(client)
    page = client.get(f"/studies/{made.study_id}").text
    block = _status_block(page)
    assert "Pending" in block and "0 attempts so far" in block and "next attempt now" in block
    assert f'hx-get="/reports/{made.report_id}/delivery"' in block and 'hx-trigger="every 10s"' in block
    assert re.search(r'<div aria-live="polite">\s*<div id="ehr-status"', page)
    assert "Retry delivery" not in block

    assert _drain(engine, images, down) == 1  # connection refused: retried later, not dead
    partial = client.get(f"/reports/{made.report_id}/delivery", headers={"HX-Request": "true"})
    assert partial.status_code == 200 and "<html" not in partial.text
    assert "1 attempt so far" in partial.text and re.search(r"next attempt at \d\d \w{3} \d\d:\d\d:\d\d UTC",
                                                             partial.text)
    assert "Last error from the EHR" in partial.text and 'hx-trigger="every 10s"' in partial.text
    assert "EHR: pending" in client.get("/").text
    assert "EHR: pending" in client.get(f"/patients/{made.patient_id}").text


def test_delivered_failed_retry_and_badges(open_app, ehr):
    client, engine, images = open_app(ehr.base_url)
    good = make_report(engine, images)
    bad = make_report(engine, images)
    _duplicate_patient_in_ehr(ehr, bad.mrn)
    assert _drain(engine, images, ehr.base_url) == 2
    outbox = OutboxService(engine)
    assert outbox.status_for_report(good.report_id).status == "delivered"
    assert outbox.status_for_report(bad.report_id).status == "dead"
    token = _login(client)

    # Delivered: the time and the EHR's own resource ids; nothing polls any more.
    block = _status_block(client.get(f"/studies/{good.study_id}").text)
    status = outbox.status_for_report(good.report_id)
    assert "Delivered" in block and "hx-trigger" not in block and "Retry" not in block
    assert status.delivered_at.strftime("%H:%M:%S") in block
    assert [ref for ref in status.ehr_ids if ref.startswith("DiagnosticReport/")]
    for ref in status.ehr_ids:
        assert f"<code>{ref}</code>" in block

    # Failed: the EHR's reason shown plainly, and Retry.
    block = _status_block(client.get(f"/studies/{bad.study_id}").text)
    assert "Failed" in block and "HTTP 412" in block and "matched 2 resources" in block
    assert 'id="delivery-retry"' in block and "hx-trigger" not in block
    outbox_id = re.search(r'name="outbox_id" value="([^"]+)"', block).group(1)
    assert outbox_id == bad.outbox_id

    # One query's worth of badges: the worklist and each patient's history cards.
    worklist = client.get("/").text
    assert "EHR: delivered" in worklist and "EHR: failed" in worklist
    assert "EHR: failed" in client.get(f"/patients/{bad.patient_id}").text
    assert "EHR: delivered" in client.get(f"/patients/{good.patient_id}/history").text

    # Retry needs the CSRF token.
    url = f"/reports/{bad.report_id}/delivery/retry"
    refused = client.post(url, data={"outbox_id": outbox_id}, headers={"HX-Request": "true"})
    assert refused.status_code == 403
    assert outbox.status_for_report(bad.report_id).status == "dead"

    # The hospital merges its duplicate; the doctor retries: the delivery is pending again, polled.
    dup = ehr.by_identifier("Patient", MRN_SYSTEM, bad.mrn)[1]
    httpx.delete(f"{ehr.base_url}/Patient/{dup['id']}").raise_for_status()
    r = client.post(url, data={"outbox_id": outbox_id}, headers={"HX-Request": "true", "x-csrftoken": token})
    assert r.status_code == 200 and "<html" not in r.text
    assert "Pending" in r.text and "0 attempts so far" in r.text and 'hx-trigger="every 10s"' in r.text
    now = outbox.status_for_report(bad.report_id)
    assert (now.status, now.attempts) == ("pending", 0)
    with Session(engine) as s:
        [event] = s.exec(select(AuditEvent).where(AuditEvent.subtype == "delivery-retry")).all()
    assert (event.agent_id, event.entity_id, event.action) == ("dr.grey", bad.report_id, "U")

    assert _drain(engine, images, ehr.base_url) == 1
    partial = client.get(f"/reports/{bad.report_id}/delivery", headers={"HX-Request": "true"}).text
    assert "Delivered" in partial and "hx-trigger" not in partial

    # A refused retry (already delivered) is a message in the block, not an error page.
    again = client.post(url, data={"outbox_id": outbox_id}, headers={"HX-Request": "true", "x-csrftoken": token})
    assert again.status_code == 409 and 'role="alert"' in again.text and "already delivered" in again.text
    assert "Delivered" in again.text
    # An outbox id of another report is not retried through this one.
    other = client.post(url, data={"outbox_id": good.outbox_id}, headers={"HX-Request": "true", "x-csrftoken": token})
    assert other.status_code == 409 and "not found" in other.text
    # Without htmx (no script): back to the result page.
    plain = client.post(url, data={"outbox_id": outbox_id, "_csrf_token": token}, follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == f"/studies/{bad.study_id}"


def test_admin_deliveries_page_filters_and_retries(open_app, ehr):
    client, engine, images = open_app(ehr.base_url)
    good = make_report(engine, images)
    bad = make_report(engine, images)
    _duplicate_patient_in_ehr(ehr, bad.mrn)
    assert _drain(engine, images, ehr.base_url) == 2

    _login(client)
    assert client.get("/admin/deliveries").status_code == 403  # doctors: no
    client.cookies.clear()
    _login(client, "admin")
    page = client.get("/admin/deliveries")
    assert page.status_code == 200
    rows = re.search(r'<table id="deliveries">.*?</table>', page.text, re.S).group(0)
    assert rows.index(f"delivery-{bad.outbox_id}") < rows.index(f"delivery-{good.outbox_id}")  # newest first
    assert f'href="/studies/{bad.study_id}"' in rows and f'href="/patients/{bad.patient_id}"' in rows
    assert "HTTP 412" in rows and rows.count("Retry<") == 1

    dead = client.get("/admin/deliveries?status=dead").text
    assert f"delivery-{bad.outbox_id}" in dead and f"delivery-{good.outbox_id}" not in dead
    assert f"delivery-{good.outbox_id}" in client.get("/admin/deliveries?status=delivered").text
    with Session(engine) as s:
        reads = s.exec(select(AuditEvent).where(AuditEvent.agent_id == "admin",
                                                col(AuditEvent.detail).contains("EHR deliveries"))).all()
    assert len(reads) == 3 and all(e.action == "R" for e in reads)

    token = re.search(r'name="_csrf_token" value="([^"]+)"', dead).group(1)
    assert client.post(f"/admin/deliveries/{bad.outbox_id}/retry", data={"status": "dead"}).status_code == 403
    r = client.post(f"/admin/deliveries/{bad.outbox_id}/retry", data={"status": "dead", "_csrf_token": token})
    assert r.status_code == 200 and "queued for an attempt now" in r.text
    assert f"delivery-{bad.outbox_id}" not in r.text  # the filter is kept: it is no longer dead
    with Session(engine) as s:
        row = s.get(OutboxDelivery, bad.outbox_id)
    assert (row.status, row.attempts) == ("pending", 0)
    refused = client.post(f"/admin/deliveries/{good.outbox_id}/retry", data={"_csrf_token": token})
    assert refused.status_code == 409 and "already delivered" in refused.text


def _study_without_results(engine, status: str, reason: str | None = None) -> tuple[str, str]:
    """A patient and a study as the analysis service leaves it while waiting, or after a failure."""
    with writing(engine) as s:
        p = PatientRepository(s).create(Patient(mrn=f"MRN-{uuid.uuid4().hex[:10]}", mrn_system=MRN_SYSTEM,
                                                family=f"Waiting-{status}", sex="unknown"), actor="t")
        st = StudyRepository(s).create(Study(
            patient_id=p.id, content_sha256="c" * 64, media_type="image/png", size_bytes=1, status=status,
            failure_reason=reason, study_uid=generate_uid(), series_uid=generate_uid(),
            sop_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.7", modality="DX"), actor="t")
        return p.id, st.id


def test_queued_and_failed_studies_on_the_pages(open_app):
    client, engine, _ = open_app(None)
    queued_patient, queued = _study_without_results(engine, "queued")
    failed_patient, failed = _study_without_results(
        engine, "failed", "interrupted: the service stopped during the analysis; upload the image again")
    _login(client)
    worklist = client.get("/").text
    assert 'class="badge queued">Queued<' in worklist and "queued for analysis" in worklist
    assert 'class="badge failed">Analysis failed<' in worklist and "analysis failed: interrupted" in worklist
    assert "Analysis failed: interrupted: the service stopped" in client.get(f"/patients/{failed_patient}").text
    assert "Queued: waiting for the AI models" in client.get(f"/patients/{queued_patient}").text
    result = client.get(f"/studies/{queued}").text
    assert 'class="badge queued">Queued<' in result and "Queued: waiting for the AI models" in result
    assert "Nothing to send: there is no report" not in result  # push is off: that is what it says
    result = client.get(f"/studies/{failed}").text
    assert "The analysis failed: interrupted: the service stopped" in result


def test_delivery_badges_cost_one_query_for_all_rows(engine, tmp_path):
    """The worklist and history read the delivery of every row shown in one query, not one per row."""
    from sqlalchemy import event

    from cxr_fhir.web.queries import worklist
    images = ImageStore(tmp_path / "images")
    made = [make_report(engine, images) for _ in range(3)]
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        if "outbox_delivery" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        rows = worklist(engine)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(rows) == 3 and {r.delivery for r in rows} == {"pending"}
    assert len(seen) == 1, seen
    assert {r.report.id for r in rows} == {m.report_id for m in made}
