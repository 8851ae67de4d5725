"""DICOM ingest: rescale, VOI window, MONOCHROME1, metadata, and refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_fhir.imaging import ImageRejected, load
from support.images import chest_like

DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def make_dicom(photometric: str = "MONOCHROME2", frames: int = 1, modality: str = "DX",
               pixels: bool = True, window: tuple[float, float] | None = None) -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.AccessionNumber = modality, "PA", "ACC123"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "MRN-42", "Doe^Jane", "19700501", "F"
    ds.StudyDate, ds.StudyTime = "20261124", "101500"
    if pixels:
        img = (chest_like() * 3000 + 500).astype(np.uint16)
        if frames > 1:
            img = np.stack([img] * frames)
            ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = img.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = img.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds


def test_monochrome2_with_metadata():
    data, ds = make_dicom()
    image = load(data)
    assert image.media_type == "application/dicom" and image.pixels.shape == (256, 256)
    assert image.pixels.min() == pytest.approx(0) and image.pixels.max() == pytest.approx(1)
    md = image.metadata
    assert md["study_uid"] == ds.StudyInstanceUID and md["sop_instance_uid"] == ds.SOPInstanceUID
    assert md["sop_class_uid"] == DX_IMAGE_STORAGE and md["modality"] == "DX" and md["view_position"] == "PA"
    assert md["patient_id"] == "MRN-42" and md["patient_sex"] == "female" and md["patient_birth_date"] == "19700501"
    assert md["acquired_at"].isoformat() == "2026-11-24T10:15:00+00:00"


def test_monochrome1_is_inverted():
    plain = load(make_dicom("MONOCHROME2")[0]).pixels
    inverted = load(make_dicom("MONOCHROME1")[0]).pixels
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)


def test_voi_window_clips_to_the_window():
    # Stored 500..3500 -> modality values 0..6000; a narrow window saturates much of the image.
    full = load(make_dicom()[0]).pixels
    windowed = load(make_dicom(window=(3000, 1000))[0]).pixels
    assert (windowed >= 0.999).mean() > (full >= 0.999).mean() + 0.05


@pytest.mark.parametrize("kwargs,code", [
    ({"frames": 2}, "multi-frame"),
    ({"pixels": False}, "not-an-image"),
    ({"modality": "CT"}, "not-a-chest-radiograph"),
])
def test_refusals(kwargs, code):
    with pytest.raises(ImageRejected) as err:
        load(make_dicom(**kwargs)[0])
    assert err.value.code == code


def test_truncated_dicom_is_corrupt():
    data, _ = make_dicom()
    with pytest.raises(ImageRejected) as err:
        load(data[: len(data) - 20000])
    assert err.value.code == "corrupt"


def test_garbage_after_the_dicom_preamble_is_refused():
    with pytest.raises(ImageRejected) as err:
        load(b"\x00" * 128 + b"DICM" + b"\xff\x13garbage" * 20)
    assert err.value.code in {"corrupt", "not-an-image"}


def test_broken_rescale_giving_non_numbers_is_refused():
    data, ds = make_dicom()
    ds.RescaleSlope = "1e39"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageRejected) as err:
        load(buf.getvalue())
    assert err.value.code == "corrupt"


def test_local_acquisition_time_uses_the_timezone_offset():
    data, ds = make_dicom()
    ds.TimezoneOffsetFromUTC = "+0100"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert load(buf.getvalue()).metadata["acquired_at"].isoformat() == "2026-11-24T09:15:00+00:00"
