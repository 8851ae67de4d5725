"""Idempotent on SOPInstanceUID, through every door, on SQLite and PostgreSQL: the same instance
sent twice, by two threads at once or by two DICOM associations at once, is one study; another
patient's instance is refused. Patients are matched on PatientID within IssuerOfPatientID."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
from sqlmodel import Session, select

from cxr_fhir.imaging import ImageRejected
from cxr_fhir.inference.pipeline import Pipeline
from cxr_fhir.records.tables import Analysis, OutboxDelivery, Patient, Report, Study
from cxr_fhir.services.analysis import AnalysisService, Uploaded
from cxr_fhir.services.patients import PatientInput, PatientService
from cxr_fhir.settings import PROJECT_ROOT
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.image_store import ImageStore
from support.dicom_films import dx_from_png, nih_films
from support.dimse_scp import c_store, count, running_scp

HOSPITAL = "urn:oid:2.16.840.1.113883.3.9999.1"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(PROJECT_ROOT / "weights", tmp_path_factory.mktemp("rt"), threads=2)


@pytest.fixture
def service(engine, pipeline, tmp_path) -> AnalysisService:
    return AnalysisService(engine, ImageStore(tmp_path / "img"), pipeline, destinations=["ehr"],
                           max_image_pixels=80_000_000, patients=PatientService(HOSPITAL))


def _files(service: AnalysisService) -> int:
    return sum(1 for p in service.images.root.rglob("*") if p.is_file()) if service.images.root.exists() else 0


def test_the_same_instance_twice_is_one_study(service, engine, shared_data, tmp_path):
    film = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "a.dcm", patient_id="MRN-1").read_bytes()
    first = service.upload(None, film, None, actor="dicom:A")
    files = _files(service)
    again = service.upload(None, film, None, actor="dicom:B")
    assert not first.duplicate and again.duplicate
    assert again.study.id == first.study.id and again.study.status == "analyzed"
    assert again.analysis is not None and again.analysis.id == first.analysis.id
    assert again.report is not None and again.report.id == first.report.id
    assert [count(engine, t) for t in (Study, Analysis, Report, OutboxDelivery, Patient)] == [1, 1, 1, 1, 1]
    assert _files(service) == files  # nothing new in the image store either


def test_concurrent_uploads_of_one_instance_make_one_study(service, engine, shared_data, tmp_path):
    film = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "a.dcm", patient_id="MRN-2").read_bytes()
    start = threading.Barrier(4)

    def send(i: int) -> Uploaded:
        start.wait()
        return service.upload(None, film, None, actor=f"dicom:N{i}")

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(send, range(4)))
    assert len({u.study.id for u in done}) == 1
    assert sum(not u.duplicate for u in done) == 1  # one filed it; the others got that study
    assert [count(engine, t) for t in (Study, Analysis, Patient)] == [1, 1, 1]


def test_the_same_instance_for_another_patient_is_refused(service, engine, shared_data, tmp_path):
    png = nih_films(shared_data, 1)[0]
    first = dx_from_png(png, tmp_path / "a.dcm", patient_id="MRN-3")
    service.upload(None, first.read_bytes(), None, actor="dicom:A")
    sop = str(__import__("pydicom").dcmread(first, stop_before_pixels=True).SOPInstanceUID)
    other = dx_from_png(png, tmp_path / "b.dcm", patient_id="MRN-4", patient_name="ROE^RICHARD", sop_uid=sop)
    files = _files(service)
    with pytest.raises(ImageRejected) as refused:
        service.upload(None, other.read_bytes(), None, actor="dicom:A")
    assert refused.value.code == "uid-conflict"
    assert count(engine, Study) == 1 and count(engine, Patient) == 1  # MRN-4 not registered either
    assert _files(service) == files


def test_patients_are_matched_within_their_issuer(service, engine, shared_data, tmp_path):
    with writing(engine) as s:  # registered at the desk, under the hospital's MRN system
        known = service.patients.register(s, PatientInput(family="Doe", given="Jane", mrn="77",
                                                          birth_date=date(1970, 5, 1)), actor="t")
    pngs = nih_films(shared_data, 3)
    ids = {}
    for png, issuer in zip(pngs, (None, "HOSP", "CLINIC-B"), strict=True):
        film = dx_from_png(png, tmp_path / f"{issuer}.dcm", patient_id="77", issuer=issuer)
        ids[issuer] = service.upload(None, film.read_bytes(), None, actor="dicom:A").study.patient_id
    assert ids[None] == known.id  # no issuer: the hospital's own MRN
    assert len(set(ids.values())) == 3  # the same PatientID from two other issuers: two other patients
    with Session(engine) as s:
        systems = {p.id: p.mrn_system for p in s.exec(select(Patient)).all()}
    assert systems[ids["HOSP"]] == "urn:cxr-fhir:issuer:HOSP"
    assert systems[ids["CLINIC-B"]] == "urn:cxr-fhir:issuer:CLINIC-B"


def test_two_associations_sending_one_instance_at_once_file_one_study(db_url, pipeline, shared_data, tmp_path):
    film = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "a.dcm", patient_id="MRN-5")
    database = None if db_url.startswith("sqlite") else db_url
    with running_scp(tmp_path / "var", pipeline, database_url=database, callers="NODE1,NODE2") as (scp, services):
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda node: c_store(scp.port, [film], calling=node), ("NODE1", "NODE2")))
        assert answers == [[(0x0000, "")], [(0x0000, "")]]
        assert [count(services.engine, t) for t in (Study, Analysis, Patient)] == [1, 1, 1]


def test_a_local_issuer_means_the_hospitals_own_mrn(tmp_path, pipeline, shared_data):
    """CXR_DICOM_LOCAL_ISSUERS: the issuer our own modalities write (from the worklist) is the
    hospital's MRN, so their films find the patient registered at the desk."""
    film = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "a.dcm", patient_id="77", issuer="HOSP")
    with running_scp(tmp_path / "var", pipeline, dicom_local_issuers="HOSP, OTHER") as (scp, services):
        with writing(services.engine) as s:
            known = services.patients.register(s, PatientInput(family="Doe", given="Jane", mrn="77"), actor="t")
        assert c_store(scp.port, [film]) == [(0x0000, "")]
        with Session(services.engine) as s:
            assert [st.patient_id for st in s.exec(select(Study)).all()] == [known.id]
        assert count(services.engine, Patient) == 1
