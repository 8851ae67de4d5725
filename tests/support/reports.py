"""Reports made directly through the repositories (no models run), queued for the EHR as the
analysis service queues them."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

from PIL import Image
from pydicom.uid import generate_uid

from cxr_fhir.records.tables import Analysis, Patient, Report, Study
from cxr_fhir.services.reports import enqueue_delivery
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.fhir import projection
from cxr_fhir.storage.image_store import ImageStore
from cxr_fhir.storage.repositories import PatientRepository, ReportRepository, StudyRepository

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"


@dataclass
class Made:
    patient_id: str
    mrn: str
    study_id: str
    study_uid: str
    analysis_id: str
    report_id: str
    outbox_id: str | None


def overlay_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def make_report(engine, images: ImageStore, queue: bool = True, mrn: str | None = None) -> Made:
    mrn = mrn or f"MRN-{uuid.uuid4().hex[:10]}"
    with writing(engine) as s:
        p = PatientRepository(s).create(Patient(mrn=mrn, mrn_system=MRN_SYSTEM, family="Testperson",
                                                given="Ada", sex="female"), actor="t")
        uid = generate_uid()
        st = StudyRepository(s).create(Study(
            patient_id=p.id, content_sha256="a" * 64, media_type="image/png", size_bytes=1, status="analyzed",
            study_uid=uid, series_uid=generate_uid(), sop_instance_uid=generate_uid(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.7", modality="DX"), actor="t")
        top3 = [{"finding": f, "probability": pr, "threshold": 0.5, "present": pr >= 0.5}
                for f, pr in (("Effusion", 0.81), ("Cardiomegaly", 0.42), ("Atelectasis", 0.2))]
        a = Analysis(study_id=st.id, model_name="cxr-resnet18", model_version="1.0", manifest_sha256="b" * 64,
                     probabilities={t["finding"]: t["probability"] for t in top3}, top3=top3,
                     boxes=[{"finding": "Effusion", "x1": 10, "y1": 20, "x2": 200, "y2": 220, "confidence": 0.7,
                             "source": "detector"}],
                     priority="urgent", priority_reasons=["Effusion above threshold"],
                     thresholds={t["finding"]: 0.5 for t in top3}, overlays={"Effusion": images.put(overlay_png())})
        s.add(a)
        s.flush()
        r = ReportRepository(s).create(Report(study_id=st.id, analysis_id=a.id,
                                              conclusion="AI draft: pleural effusion likely."), actor="system")
        # What the analysis service does too: the FHIR API serves these rows from its store.
        projection.patient(s, p)
        projection.study(s, st)
        projection.results(s, st, a, r)
        row = enqueue_delivery(s, r) if queue else None
        return Made(p.id, mrn, st.id, uid, a.id, r.id, row.id if row else None)
