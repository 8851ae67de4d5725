"""Rows and source films for the DICOM builders: a realistic DX made from a real NIH PNG (when the
shared data is there) and a synthetic one with a bare header (always)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from cxr_fhir.imaging import XRayImage, load
from cxr_fhir.records.tables import Analysis, Patient, Report, Study
from support.images import chest_like
from support.part10 import encoded

NIH_FILM = "00000003_000.png"


def dx_dataset(pixels: np.ndarray, *, realistic: bool) -> Dataset:
    """A DX For Presentation instance holding ``pixels`` (uint16, 12 bits stored). ``realistic`` adds
    what a modality writes beyond the minimum (orientation, pixel spacing, institution, view)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.AccessionNumber = "DX", "ACC-2026-0042"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "MRN-77", "Doe^Jane", "19700501", "F"
    ds.StudyDate, ds.StudyTime = "20261124", "101500"
    if realistic:
        ds.IssuerOfPatientID, ds.StudyID, ds.ReferringPhysicianName = "HOSP", "S1", "Grey^Meredith"
        ds.InstitutionName, ds.ViewPosition, ds.BodyPartExamined = "General Hospital", "PA", "CHEST"
        ds.PatientOrientation, ds.ImagerPixelSpacing = ["L", "F"], [0.143, 0.143]
        ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


@dataclass
class Source:
    dataset: Dataset
    image: XRayImage


def _source(pixels: np.ndarray, realistic: bool) -> Source:
    data = encoded(dx_dataset(pixels, realistic=realistic))
    return Source(pydicom.dcmread(io.BytesIO(data)), load(data))


@pytest.fixture
def synthetic_source() -> Source:
    return _source((chest_like(640) * 4095).astype(np.uint16), realistic=False)


@pytest.fixture
def nih_source(shared_data: Path) -> Source:
    png = np.asarray(Image.open(shared_data / "nih" / "images" / NIH_FILM).convert("L"), dtype=np.uint16)
    return _source(png * 16, realistic=True)


@pytest.fixture(params=["synthetic", "nih"])
def source(request) -> Source:
    return request.getfixturevalue(f"{request.param}_source")


@dataclass
class Rows:
    patient: Patient
    study: Study
    analysis: Analysis
    report: Report


def make_rows(*, unusual_film: bool = True) -> Rows:
    patient = Patient(id="pat-1", mrn="MRN-77", mrn_system="urn:oid:2.16.840.1.113883.3.9999.1", family="Doe",
                      given="Jane", birth_date=date(1970, 5, 1), sex="female")
    study = Study(id="study-1", patient_id=patient.id, content_sha256="a" * 64, media_type="application/dicom",
                  size_bytes=1, accession_number="ACC-2026-0042",
                  acquired_at=datetime(2026, 11, 24, 10, 15, tzinfo=UTC))
    top3 = [{"finding": "Effusion", "probability": 0.81, "threshold": 0.42, "present": True},
            {"finding": "Cardiomegaly", "probability": 0.38, "threshold": 0.5, "present": False},
            {"finding": "Pleural_Thickening", "probability": 0.2, "threshold": 0.3, "present": False}]
    probabilities = {"Effusion": 0.81, "Cardiomegaly": 0.38, "Pleural_Thickening": 0.2, "Mass": 0.16, "Nodule": 0.1}
    # Mass is outside the top three yet at its (low) threshold: it must still be reported.
    thresholds = {"Effusion": 0.42, "Cardiomegaly": 0.5, "Pleural_Thickening": 0.3, "Mass": 0.15, "Nodule": 0.4}
    boxes = [{"finding": "Effusion", "x1": 40.5, "y1": 300.0, "x2": 210.0, "y2": 460.25, "confidence": 0.7,
              "source": "detector"},
             {"finding": "Effusion", "x1": 330.0, "y1": 310.0, "x2": 480.0, "y2": 470.0, "confidence": 0.55,
              "source": "detector"},
             {"finding": "Mass", "x1": 100.0, "y1": 120.0, "x2": 160.0, "y2": 190.0, "confidence": 0.16,
              "source": "heatmap"}]
    analysis = Analysis(id="analysis-1", study_id=study.id, model_name="cxr-densenet121", model_version="2.3.0",
                        manifest_sha256="c0ffee" + "0" * 58, probabilities=probabilities, top3=top3, boxes=boxes,
                        priority="urgent", priority_reasons=["Effusion above threshold"], thresholds=thresholds,
                        unusual_film=unusual_film)
    report = Report(id="report-1", study_id=study.id, analysis_id=analysis.id, status="preliminary", version_id=1,
                    conclusion="Suggestive of: Pleural effusion (probability 81%). Triage priority: URGENT.",
                    issued=datetime(2026, 11, 24, 10, 16, 30, tzinfo=UTC))
    return Rows(patient, study, analysis, report)


def confirm(rows: Rows, status: str = "final", version: int = 2) -> Rows:
    rows.report.status, rows.report.version_id = status, version
    rows.report.confirmed_by, rows.report.confirmed_at = "dr.house", datetime(2026, 11, 24, 11, 0, 5, tzinfo=UTC)
    return rows


@pytest.fixture
def rows() -> Rows:
    return make_rows()


@pytest.fixture
def final_rows() -> Rows:
    """The same report confirmed by a doctor: version 2, final."""
    return confirm(make_rows())
