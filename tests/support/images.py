"""Small synthetic radiograph-like images made in the tests (real ones come from ../shared/data)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def chest_like(size: int = 256) -> np.ndarray:
    """A smooth grey field with two darker 'lungs': contrast without being a real radiograph."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + \
        np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    return (0.8 - 0.5 * lungs).clip(0, 1)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def png8() -> bytes:
    return encode((chest_like() * 255).astype(np.uint8))


def dicom_from_png(png: bytes, patient_id: str, patient_name: str = "Doe^Jane") -> bytes:
    """A real radiograph (PNG) wrapped as a DX DICOM file with a patient header."""
    import io as _io

    from PIL import Image as _Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(_Image.open(_io.BytesIO(png)).convert("L"), dtype=np.uint16) * 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.AccessionNumber = "DX", "PA", "ACC-77"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "19700501", "F"
    ds.StudyDate, ds.StudyTime = "20261124", "101500"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buf = _io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
