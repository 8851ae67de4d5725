"""Confirm, amend and delete: status rules, versions, and the outbox row in the same transaction."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from cxr_fhir.domain.errors import Gone, VersionConflict
from cxr_fhir.records.tables import Analysis, OutboxDelivery, Patient, Report, Study
from cxr_fhir.services.reports import ReportService, ReportStateError, StudyService
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.repositories import PatientRepository, ReportRepository, StudyRepository


@pytest.fixture
def report_id(engine) -> str:
    with writing(engine) as s:
        p = PatientRepository(s).create(Patient(mrn="M1", mrn_system="urn:x", family="Doe"), actor="t")
        st = StudyRepository(s).create(Study(patient_id=p.id, content_sha256="a" * 64, media_type="image/png",
                                             size_bytes=1, status="analyzed"), actor="t")
        a = Analysis(study_id=st.id, model_name="m", model_version="1", manifest_sha256="b" * 64, priority="routine")
        s.add(a)
        s.flush()
        return ReportRepository(s).create(Report(study_id=st.id, analysis_id=a.id, conclusion="AI draft"), actor="t").id


def _outbox(engine) -> list[tuple[str, int]]:
    with Session(engine) as s:
        return [(r.report_id, r.report_version)
                for r in s.exec(select(OutboxDelivery).order_by(OutboxDelivery.report_version))]


def test_confirm_then_amend_queues_each_version(engine, report_id):
    svc = ReportService(destinations=["ehr"])
    with writing(engine) as s:
        r = svc.confirm(s, report_id, actor="dr.a", conclusion="  No acute finding.  ")
    assert (r.status, r.version_id, r.conclusion, r.confirmed_by) == ("final", 2, "No acute finding.", "dr.a")
    with pytest.raises(ReportStateError), writing(engine) as s:
        svc.confirm(s, report_id, actor="dr.a")
    with pytest.raises(VersionConflict), writing(engine) as s:
        svc.amend(s, report_id, "Small effusion.", actor="dr.b", expected_version=1)
    with writing(engine) as s:
        r = svc.amend(s, report_id, "Small left effusion.", actor="dr.b", expected_version=2)
    assert (r.status, r.version_id) == ("amended", 3)
    assert _outbox(engine) == [(report_id, 2), (report_id, 3)]


def test_rules_refuse_without_writing(engine, report_id):
    svc = ReportService(destinations=["ehr"])
    with pytest.raises(ReportStateError), writing(engine) as s:
        svc.amend(s, report_id, "text", actor="dr.a")  # still preliminary
    with pytest.raises(ReportStateError), writing(engine) as s:
        svc.confirm(s, report_id, actor="dr.a", conclusion="   ")
    with writing(engine) as s:
        assert ReportRepository(s).get(report_id).version_id == 1
    assert _outbox(engine) == []


def test_delete_study_cancels_report_and_keeps_history(engine, report_id):
    with writing(engine) as s:
        study_id = ReportRepository(s).get(report_id).study_id
    with writing(engine) as s:
        StudyService(destinations=()).delete(s, study_id, actor="dr.a")
    with writing(engine) as s:
        with pytest.raises(Gone):
            StudyRepository(s).get(study_id)
        assert ReportRepository(s).get(report_id).status == "cancelled"
        assert [h.operation for h in StudyRepository(s).history(study_id)] == ["delete", "create"]
    assert _outbox(engine) == []  # push disabled: nothing queued
