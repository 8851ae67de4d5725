"""One upload end to end, on SQLite and PostgreSQL, with the real models and images."""

from __future__ import annotations

import io
from datetime import date

import pytest
from PIL import Image
from sqlmodel import Session, func, select

from cxr_fhir.domain.errors import NotFound
from cxr_fhir.imaging import ImageRejected
from cxr_fhir.inference.pipeline import Pipeline
from cxr_fhir.records.tables import Analysis, OutboxDelivery, Patient, Report, Study
from cxr_fhir.services.analysis import AnalysisService
from cxr_fhir.settings import PROJECT_ROOT
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.image_store import ImageStore
from cxr_fhir.storage.repositories import PatientRepository, StudyRepository


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(PROJECT_ROOT / "weights", tmp_path_factory.mktemp("rt"), threads=2)


@pytest.fixture
def patient_id(engine) -> str:
    with writing(engine) as s:
        return PatientRepository(s).create(Patient(mrn="MRN-9", mrn_system="urn:oid:1.2", family="Doe",
                                                   given="Ann", birth_date=date(1960, 1, 2)), actor="t").id


def _count(engine, table) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(table)).one()


def _files(root) -> list:
    return [p for p in root.rglob("*") if p.is_file()]


def test_upload_stores_study_analysis_report_and_overlays(engine, pipeline, patient_id, shared_data, tmp_path):
    images = ImageStore(tmp_path / "img")
    service = AnalysisService(engine, images, pipeline, destinations=["ehr"], max_image_pixels=80_000_000)
    data = sorted((shared_data / "nih" / "originals").glob("*.png"))[0].read_bytes()
    up = service.upload(patient_id, data, "chest.png", actor="dr.a")
    assert up.study.status == "analyzed" and up.study.width == 1024 and up.study.uploaded_by == "dr.a"
    assert images.get(up.study.content_sha256) == data
    assert len(up.analysis.probabilities) == 14 and len(up.analysis.thresholds) == 14
    assert set(up.analysis.overlays) == {t["finding"] for t in up.analysis.top3}
    assert all(images.exists(h) for h in up.analysis.overlays.values())
    assert up.report.status == "preliminary" and "Triage priority" in up.report.conclusion
    assert _count(engine, OutboxDelivery) == 1
    with writing(engine) as s:
        assert [h.operation for h in StudyRepository(s).history(up.study.id)] == ["update", "create"]


def test_refused_images_store_nothing(engine, pipeline, patient_id, tmp_path):
    images = ImageStore(tmp_path / "img")
    service = AnalysisService(engine, images, pipeline, destinations=(), max_image_pixels=80_000_000)
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.page()).save(buf, format="PNG")  # a scanned page, greyscale
    for data, code in ((b"hello", "not-an-image"), (buf.getvalue(), "not-a-chest-radiograph")):
        with pytest.raises(ImageRejected) as err:
            service.upload(patient_id, data, "x.png", actor="dr.a")
        assert err.value.code == code
    assert _count(engine, Study) == 0 and _files(tmp_path / "img") == []


def test_unknown_patient_leaves_no_file(engine, pipeline, shared_data, tmp_path):
    images = ImageStore(tmp_path / "img")
    service = AnalysisService(engine, images, pipeline, destinations=(), max_image_pixels=80_000_000)
    data = sorted((shared_data / "nih" / "originals").glob("*.png"))[0].read_bytes()
    with pytest.raises(NotFound):
        service.upload("no-such-patient", data, None, actor="dr.a")
    assert _count(engine, Study) == 0 and _files(tmp_path / "img") == []


def test_inference_failure_marks_the_study_failed(engine, pipeline, patient_id, shared_data, tmp_path, monkeypatch):
    images = ImageStore(tmp_path / "img")
    service = AnalysisService(engine, images, pipeline, destinations=["ehr"], max_image_pixels=80_000_000)

    def broken(*a, **k):
        raise RuntimeError("simulated inference fault")

    monkeypatch.setattr(pipeline, "run", broken)
    data = sorted((shared_data / "nih" / "originals").glob("*.png"))[1].read_bytes()
    up = service.upload(patient_id, data, "b.png", actor="dr.a")
    assert up.study.status == "failed" and "RuntimeError" in up.study.failure_reason
    assert up.analysis is None and up.report is None
    assert images.exists(up.study.content_sha256)
    assert _count(engine, Analysis) == 0 and _count(engine, Report) == 0 and _count(engine, OutboxDelivery) == 0


def test_a_failure_after_inference_still_ends_failed(engine, pipeline, patient_id, shared_data, tmp_path,
                                                     monkeypatch):
    """The study is deleted while the models run: no crash, no study left 'analyzing' untouched."""
    images = ImageStore(tmp_path / "img")
    service = AnalysisService(engine, images, pipeline, destinations=(), max_image_pixels=80_000_000)
    real_run = pipeline.run

    def run_then_delete(image, **kw):
        result = real_run(image, **kw)
        with writing(engine) as s:
            study = s.exec(select(Study)).one()
            StudyRepository(s).soft_delete(study.id, actor="dr.b")
        return result

    monkeypatch.setattr(pipeline, "run", run_then_delete)
    data = sorted((shared_data / "nih" / "originals").glob("*.png"))[2].read_bytes()
    up = service.upload(patient_id, data, "x" * 400 + ".png", actor="dr.a")
    assert up.analysis is None and up.report is None
    assert _count(engine, Analysis) == 0 and _count(engine, Report) == 0
    with writing(engine) as s:
        stored = StudyRepository(s).get(up.study.id, include_deleted=True)
        assert stored.deleted_at is not None and len(stored.original_filename) == 255
