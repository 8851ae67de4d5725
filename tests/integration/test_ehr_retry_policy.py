"""How the worker treats each kind of EHR answer, against a small real HTTP server that answers
what the test tells it to (sekmet cannot be made to answer 429 or 503 on demand)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select

from cxr_fhir.outbound.ehr_auth import Auth
from cxr_fhir.outbound.ehr_client import EhrClient
from cxr_fhir.outbound.worker import DeliveryWorker, Policy
from cxr_fhir.records.tables import AuditEvent, OutboxDelivery
from cxr_fhir.records.types import utcnow
from cxr_fhir.storage.image_store import ImageStore
from support.reports import make_report


class Scripted(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict, dict]] = []
    received = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received += 1
        status, headers, body = type(self).answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    Scripted.answers, Scripted.received = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def _oo(text):
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]}


OK = (200, {}, {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [{"response": {"status": "201 Created", "location": "DiagnosticReport/9/_history/1"}}]})


def _setup(engine, tmp_path, base_url, **policy):
    images = ImageStore(tmp_path / "img")
    made = make_report(engine, images)
    policy = Policy(retry_base_s=60, retry_max_s=600, lease=timedelta(seconds=30), **policy)
    return made, DeliveryWorker(engine, images, EhrClient(base_url, Auth(), timeout_s=5), policy, "w")


def _row(engine) -> OutboxDelivery:
    with Session(engine) as s:
        return s.exec(select(OutboxDelivery)).one()


def _due_now(engine):
    with Session(engine) as s:
        row = s.exec(select(OutboxDelivery)).one()
        row.next_attempt_at = utcnow()
        s.add(row)
        s.commit()


def test_429_honours_retry_after_and_5xx_backs_off(engine, tmp_path, scripted):
    made, worker = _setup(engine, tmp_path, scripted)
    Scripted.answers = [(429, {"Retry-After": "120"}, _oo("slow down")), (503, {}, _oo("maintenance")), OK]
    before = utcnow()
    assert worker.drain() == 1
    row = _row(engine)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 429: error: slow down")
    assert timedelta(seconds=119) <= row.next_attempt_at - before <= timedelta(seconds=122)
    assert worker.drain() == 0  # not due yet

    _due_now(engine)
    before = utcnow()
    assert worker.drain() == 1
    row = _row(engine)
    assert (row.status, row.attempts, row.last_error) == ("pending", 2, "HTTP 503: error: maintenance")
    assert timedelta(seconds=60) <= row.next_attempt_at - before <= timedelta(seconds=121)  # 2nd: 60..120 s

    _due_now(engine)
    assert worker.drain() == 1
    row = _row(engine)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 3, None)
    assert row.ehr_response["entries"] == [{"status": "201 Created", "id": "DiagnosticReport/9"}]
    with Session(engine) as s:
        outcomes = [e.outcome for e in s.exec(select(AuditEvent).where(AuditEvent.subtype == "delivery")
                                                .order_by(AuditEvent.recorded))]
    assert outcomes == ["8", "8", "0"]


@pytest.mark.parametrize("status", [400, 404, 409, 412, 422])
def test_other_4xx_is_dead_at_once(engine, tmp_path, scripted, status):
    made, worker = _setup(engine, tmp_path, scripted)
    Scripted.answers = [(status, {}, _oo("Observation.code: required"))]
    assert worker.drain() == 1
    row = _row(engine)
    assert (row.status, row.attempts) == ("dead", 1)
    assert row.last_error == f"HTTP {status}: error: Observation.code: required"
    assert row.ehr_response["outcome"]["issue"][0]["diagnostics"] == "Observation.code: required"


def test_408_retries_and_attempts_run_out_into_dead_letter(engine, tmp_path, scripted):
    made, worker = _setup(engine, tmp_path, scripted, max_attempts=2)
    Scripted.answers = [(408, {}, _oo("timeout")), (500, {}, _oo("boom"))]
    worker.drain()
    assert _row(engine).status == "pending"
    _due_now(engine)
    worker.drain()
    row = _row(engine)
    assert row.status == "dead" and row.last_error == "gave up after 2 attempt(s): HTTP 500: error: boom"
    assert Scripted.received == 2


def test_too_old_is_dead_after_one_failure(engine, tmp_path, scripted):
    made, worker = _setup(engine, tmp_path, scripted, max_age=timedelta(seconds=0))
    Scripted.answers = [(503, {}, _oo("down"))]
    worker.drain()
    assert (_row(engine).status == "dead"
            and "gave up after 1 attempt(s) and the maximum age: HTTP 503" in _row(engine).last_error)


def test_401_fetches_a_fresh_credential_once(engine, tmp_path, scripted):
    made, worker = _setup(engine, tmp_path, scripted)
    Scripted.answers = [(401, {}, _oo("token revoked")), OK]
    assert worker.drain() == 1
    assert _row(engine).status == "delivered" and Scripted.received == 2


def test_what_we_send_and_show_is_valid_r4(engine, tmp_path):
    """The transaction Bundle (patient with and without MRN) and the DiagnosticReport carrying its
    delivery status, through the independent validator."""
    from cxr_fhir.fhir import mapping
    from cxr_fhir.outbound.worker import build_bundle
    from cxr_fhir.records.tables import Analysis
    from cxr_fhir.services.outbox import OutboxService
    from cxr_fhir.storage.repositories import ReportRepository, StudyRepository
    from support.fhir_validator import validate

    images = ImageStore(tmp_path / "img")
    made = make_report(engine, images)
    with Session(engine) as s:
        bundle = build_bundle(s, images, made.report_id)
        report = ReportRepository(s).get(made.report_id)
        study = StudyRepository(s).get(made.study_id)
        analysis = s.get(Analysis, made.analysis_id)
        code = OutboxService(engine).status_for_report(made.report_id).fhir_code
        dr = mapping.to_wire(mapping.diagnostic_report(report, analysis, study,
                                                       mapping.observations(analysis, study, report),
                                                       delivery_status=code))
    assert dr["extension"] == [{"url": "urn:cxr-fhir:ehr-delivery-status", "valueCode": "pending"}]
    from support import us_core

    pushed = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert us_core.problems(pushed) == []
    assert us_core.problems(dr) == []
    results = validate([bundle, dr])
    assert [r["issues"] for r in results] == [[], []], json.dumps(results, indent=1)
