"""The storage layer on both databases: versioned create/read/update, history, soft delete."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from cxr_fhir.domain.errors import Gone, NotFound, VersionConflict
from cxr_fhir.records.tables import Patient, ResourceVersion, Study
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.repositories import PatientRepository, StudyRepository


def _patient(**kw) -> Patient:
    base = dict(mrn="MRN-001", mrn_system="urn:oid:1.2.3", family="Doe", given="Jane",
                birth_date=date(1970, 5, 1), sex="female", er_area="resus", triage_level=2)
    base.update(kw)
    return Patient(**base)


def test_create_read_update_keeps_every_version(engine):
    with writing(engine) as s:
        p = PatientRepository(s).create(_patient(), actor="dr.house")
        pid = p.id
        assert p.version_id == 1

    with writing(engine) as s:
        repo = PatientRepository(s)
        p = repo.get(pid)
        assert (p.family, p.birth_date, p.created_at.tzinfo is not None) == ("Doe", date(1970, 5, 1), True)
        updated = repo.update(pid, {"family": "Smith", "triage_level": 1}, actor="dr.cuddy", expected_version=1)
        assert updated.version_id == 2

    with writing(engine) as s:
        repo = PatientRepository(s)
        assert repo.get(pid).family == "Smith"
        history = repo.history(pid)
        assert [h.version_id for h in history] == [2, 1]
        assert history[1].content["family"] == "Doe" and history[1].actor == "dr.house"
        assert history[0].content["family"] == "Smith" and history[0].operation == "update"
        assert repo.version(pid, 1).content["triage_level"] == 2


def test_stale_version_is_refused_and_nothing_changes(engine):
    with writing(engine) as s:
        pid = PatientRepository(s).create(_patient(), actor="a").id
    with writing(engine) as s:
        PatientRepository(s).update(pid, {"given": "Janet"}, actor="a")
    with pytest.raises(VersionConflict):
        with writing(engine) as s:
            PatientRepository(s).update(pid, {"given": "Joan"}, actor="b", expected_version=1)
    with writing(engine) as s:
        p = PatientRepository(s).get(pid)
        assert (p.given, p.version_id) == ("Janet", 2)


def test_soft_delete_keeps_row_and_history(engine):
    with writing(engine) as s:
        pid = PatientRepository(s).create(_patient(), actor="a").id
    with writing(engine) as s:
        d = PatientRepository(s).soft_delete(pid, actor="dr.who")
        assert d.deleted_by == "dr.who" and d.version_id == 2
        PatientRepository(s).soft_delete(pid, actor="dr.who")  # idempotent
    with writing(engine) as s:
        repo = PatientRepository(s)
        with pytest.raises(Gone):
            repo.get(pid)
        assert repo.get(pid, include_deleted=True).deleted_at is not None
        assert [h.operation for h in repo.history(pid)] == ["delete", "create"]
        assert repo.by_mrn("MRN-001", "urn:oid:1.2.3") is None
        with pytest.raises(Gone):
            repo.update(pid, {"family": "X"}, actor="a")
        with pytest.raises(NotFound):
            repo.get("no-such-id")


def test_patient_search_and_study_foreign_key(engine):
    with writing(engine) as s:
        repo = PatientRepository(s)
        a = repo.create(_patient(mrn="A1", family="Alvarez", er_area="resus"), actor="a")
        repo.create(_patient(mrn="B2", family="Brown", er_area="minors", triage_level=4), actor="a")
        StudyRepository(s).create(Study(patient_id=a.id, content_sha256="a" * 64, media_type="image/png",
                                        size_bytes=10), actor="a")
    with writing(engine) as s:
        repo = PatientRepository(s)
        rows, total = repo.search("alv")
        assert total == 1 and rows[0].mrn == "A1"
        rows, total = repo.search("b2")
        assert [r.family for r in rows] == ["Brown"]
        assert repo.search("%")[1] == 0 and repo.search("_")[1] == 0  # no wildcards from users
        assert repo.by_mrn("A1", "urn:oid:1.2.3").family == "Alvarez" and repo.by_mrn("A1", "urn:other") is None
        assert repo.search(er_area="minors")[1] == 1 and repo.search(triage_level=2)[1] == 1
        assert len(StudyRepository(s).for_patient(a.id)) == 1
        assert s.exec(select(ResourceVersion).where(ResourceVersion.resource_type == "Study")).first() is not None
    with pytest.raises(IntegrityError):  # foreign keys are enforced on SQLite too
        with writing(engine) as s:
            StudyRepository(s).create(Study(patient_id="missing", content_sha256="b" * 64,
                                            media_type="image/png", size_bytes=1), actor="a")


def test_managed_fields_cannot_be_overwritten(engine):
    with writing(engine) as s:
        pid = PatientRepository(s).create(_patient(), actor="a").id
    with pytest.raises(ValueError):
        with writing(engine) as s:
            PatientRepository(s).update(pid, {"version_id": 99}, actor="a")


def test_a_stale_copy_in_the_session_cannot_win(engine):
    with writing(engine) as s:
        pid = PatientRepository(s).create(_patient(), actor="a").id
    with writing(engine) as a_session:
        mine = PatientRepository(a_session).get(pid)  # version 1 now sits in this session
        assert mine.version_id == 1
        if engine.dialect.name == "sqlite":
            # SQLite: a unit of work holds the write lock from its start (BEGIN IMMEDIATE), so the
            # other writer can only come in after this one ends its transaction.
            a_session.rollback()
        with writing(engine) as other:
            PatientRepository(other).update(pid, {"given": "Other"}, actor="b")
        with pytest.raises(VersionConflict):
            PatientRepository(a_session).update(pid, {"given": "Mine"}, actor="a", expected_version=1)


def test_rows_from_before_the_fhir_store_are_projected_once(engine):
    """Data stored before migration 0003 (rows without FHIR resources) become visible to the API."""
    from cxr_fhir.records.tables import FhirResource, Study
    from cxr_fhir.storage.fhir import projection, store
    from cxr_fhir.storage.repositories import StudyRepository

    with writing(engine) as s:
        p = PatientRepository(s).create(_patient(), actor="old")
        st = StudyRepository(s).create(Study(patient_id=p.id, content_sha256="d" * 64, media_type="image/png",
                                             size_bytes=1, status="failed"), actor="old")
    with writing(engine) as s:
        assert projection.backfill(s) == {"Patient": 1, "ImagingStudy": 1, "DiagnosticReport": 0}
    with writing(engine) as s:
        assert projection.backfill(s) == {"Patient": 0, "ImagingStudy": 0, "DiagnosticReport": 0}
        assert store.read(s, "Patient", p.id).content["name"][0]["family"] == p.family
        assert store.read(s, "ImagingStudy", st.id).version_id == st.version_id
        assert s.get(FhirResource, ("Media", st.id)) is not None


def test_patient_search_folds_case_beyond_ascii(engine):
    with writing(engine) as s:
        PatientRepository(s).create(_patient(family="ZOË", given="ÅSA", mrn="U-1"), actor="t")
        rows, total = PatientRepository(s).search("zoë")
        assert total == 1 and rows[0].family == "ZOË"
        assert PatientRepository(s).search("åsa")[1] == 1
