"""Faults: a full analysis queue, an image store that cannot be written, a database that is down,
and studies a dead process left half-way. Each answer is clear and nothing is half-written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from litestar.testing import TestClient
from sqlmodel import Session, func, select

from cxr_fhir.app import create_app
from cxr_fhir.records.tables import Patient, Study
from cxr_fhir.records.types import utcnow
from cxr_fhir.services.analysis import AnalysisService
from cxr_fhir.services.queue import InferenceQueue, Saturated
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.repositories import PatientRepository, StudyRepository


def test_queue_admits_up_to_capacity_then_refuses_with_a_wait():
    queue = InferenceQueue(max_waiting=2, seconds_per_image=0.5)
    with queue.admitted(), queue.admitted(), queue.admitted():
        with pytest.raises(Saturated) as refused:
            with queue.admitted():
                pass
        assert refused.value.retry_after_s == 2 and queue.in_flight == 3
    assert queue.in_flight == 0
    with queue.admitted():  # a slot is free again once a request leaves, even by an exception
        pass


def test_interrupted_studies_are_failed_visibly_and_recent_ones_left_alone(engine):
    with writing(engine) as s:
        p = PatientRepository(s).create(Patient(mrn="F1", mrn_system="urn:x", family="Doe"), actor="t")
        ids = {}
        for name, status in (("old-queued", "queued"), ("old-analyzing", "analyzing"), ("recent", "queued"),
                             ("done", "analyzed")):
            ids[name] = StudyRepository(s).create(Study(patient_id=p.id, content_sha256="c" * 64,
                                                        media_type="image/png", size_bytes=1, status=status),
                                                  actor="t").id
        for name in ("old-queued", "old-analyzing", "done"):
            s.get(Study, ids[name]).updated_at = utcnow() - timedelta(hours=1)
    assert AnalysisService.fail_interrupted(engine, timedelta(minutes=5)) == 2
    with Session(engine) as s:
        status = {name: (s.get(Study, i).status, s.get(Study, i).failure_reason) for name, i in ids.items()}
    assert status["old-queued"][0] == status["old-analyzing"][0] == "failed"
    assert "interrupted" in status["old-queued"][1]
    assert status["recent"] == ("queued", None) and status["done"] == ("analyzed", None)


def test_database_down_is_a_503_operation_outcome_with_retry_after(tmp_path):
    settings = Settings(runtime_dir=tmp_path / "var", load_models=False, _env_file=None,
                        database_url="postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    with TestClient(create_app(settings)) as client:
        r = client.get("/fhir/Patient", headers={"Authorization": "Bearer cxr_x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["issue"][0]["code"] == "transient"
        assert client.get("/ready").status_code == 503


def _count(engine, table) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(table)).one()
