"""DICOM decoding: modality LUT, VOI LUT/window, MONOCHROME1 inversion, and the metadata FHIR needs."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from .errors import ImageRejected
from .image import XRayImage, check_geometry, stretch

RADIOGRAPHY = {"CR", "DX", "DR", "RG"}


def decode_dicom(data: bytes, max_pixels: int, min_side: int) -> XRayImage:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise ImageRejected("corrupt", "malformed DICOM file") from exc
    if "PixelData" not in ds:
        raise ImageRejected("not-an-image", "this DICOM object holds no image (no PixelData)")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPHY:
        raise ImageRejected("not-a-chest-radiograph", f"DICOM modality {modality} is not a radiograph (CR/DX)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageRejected("multi-frame", "multi-frame DICOM is not supported; upload one radiograph")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    check_geometry(cols, rows, max_pixels, min_side)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric == "PALETTE COLOR":
        raise ImageRejected("colour-photograph", "colour DICOM is not a radiograph")
    syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
    try:
        raw = ds.pixel_array
    except Exception as exc:
        if syntax is not None and not syntax.is_compressed:
            raise ImageRejected("corrupt", "the DICOM pixel data is truncated or malformed") from exc
        raise ImageRejected("unsupported-format",
                            f"cannot decode this DICOM pixel data (transfer syntax {syntax})") from exc
    arr = apply_modality_lut(raw, ds)
    arr = apply_voi_lut(arr, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else arr
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImageRejected("corrupt", "the DICOM rescale or VOI values give pixels that are not numbers")
    pixels = stretch(arr)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels  # MONOCHROME1 shows low values white; we want bone bright
    return XRayImage(pixels=np.ascontiguousarray(pixels), media_type="application/dicom",
                     bits=int(ds.get("BitsStored", 16) or 16), metadata=_metadata(ds, modality))


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    value = str(value).strip() if value is not None else ""
    return value or None


def _acquired(ds: Any) -> datetime | None:
    day = _text(ds, "AcquisitionDate") or _text(ds, "StudyDate")
    clock = _text(ds, "AcquisitionTime") or _text(ds, "StudyTime") or "000000"
    if not day:
        return None
    try:
        local = datetime.strptime(day + clock.split(".")[0].ljust(6, "0")[:6], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    # DICOM dates are local time; the offset, when the modality wrote it, makes them absolute.
    offset = _text(ds, "TimezoneOffsetFromUTC")
    if offset and len(offset) == 5 and offset[0] in "+-" and offset[1:].isdecimal():
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return local.replace(tzinfo=tz).astimezone(UTC)
    return local.replace(tzinfo=UTC)


def _metadata(ds: Any, modality: str) -> dict[str, Any]:
    birth = _text(ds, "PatientBirthDate")
    return {
        "study_uid": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "accession_number": _text(ds, "AccessionNumber"),
        "modality": modality or None,
        "view_position": _text(ds, "ViewPosition"),
        "acquired_at": _acquired(ds),
        "patient_id": _text(ds, "PatientID"),
        "patient_issuer": _text(ds, "IssuerOfPatientID"),  # the PatientID means something only within it
        "patient_name": _text(ds, "PatientName"),
        "patient_birth_date": birth if birth and len(birth) == 8 and birth.isdecimal() else None,
        "patient_sex": {"M": "male", "F": "female", "O": "other"}.get(_text(ds, "PatientSex") or "", None),
    }
