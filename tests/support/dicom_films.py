"""Real NIH chest films (PNG) made into DICOM files, as a modality would send them.

One interface for every DICOM test (DIMSE SCP, STOW-RS, the Orthanc round trip):

    dx_from_png(png, out, patient_id="P1")                      # DX for presentation, explicit VR LE
    dx_from_png(png, out, patient_id="P1", syntax="jpeg-lossless")
    cr_from_png(png, out, patient_id="P1")                      # the same film as a CR instance
    non_chest(png, out, patient_id="P1")                        # Modality CT (Secondary Capture class)
    multiframe(png, out, patient_id="P1")                       # two frames in one DX instance
    read_uids(path) -> {"study": ..., "series": ..., "sop": ..., "sop_class": ..., "syntax": ...}

Compressed syntaxes are made by the reference encoders (dcmtk `dcmcjpeg`/`dcmcjpls`) where
installed, else by pydicom's own encoders; `syntax_unavailable(syntax)` says why one cannot be made
here (the caller skips with that reason), and `SYNTAXES` lists the names with their transfer syntax UIDs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)

DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

# name -> (transfer syntax, dcmtk command that makes it from an explicit-VR file, or None)
SYNTAXES: dict[str, tuple[UID, list[str] | None]] = {
    "explicit": (ExplicitVRLittleEndian, None),
    "implicit": (ImplicitVRLittleEndian, None),
    "deflated": (DeflatedExplicitVRLittleEndian, None),
    "jpeg-lossless": (JPEGLosslessSV1, ["dcmcjpeg", "+e1"]),
    "jpeg-lossless-nh": (JPEGLossless, ["dcmcjpeg", "+el"]),
    "jpeg-baseline": (JPEGBaseline8Bit, ["dcmcjpeg", "+eb"]),
    "jpeg-ls": (JPEGLSLossless, ["dcmcjpls", "+el"]),
    "jpeg2000": (JPEG2000Lossless, None),  # pydicom + pylibjpeg-openjpeg (dcmtk has no J2K codec)
}


def syntax_unavailable(syntax: str) -> str | None:
    """Why ``syntax`` cannot be made on this machine (None when it can)."""
    if syntax not in SYNTAXES:
        return f"unknown syntax {syntax!r}; one of {sorted(SYNTAXES)}"
    tool = SYNTAXES[syntax][1]
    if tool is not None and shutil.which(tool[0]) is None:
        return f"{tool[0]} (dcmtk) is not installed"
    if syntax == "jpeg2000":
        try:
            import openjpeg  # noqa: F401
        except ImportError:
            return "pylibjpeg-openjpeg is not installed (no JPEG 2000 encoder)"
    return None


def _pixels(png: Path, bits: int) -> np.ndarray:
    grey = np.asarray(Image.open(png).convert("L"))
    if bits == 8:
        return grey.astype(np.uint8)
    return (grey.astype(np.uint16) * 16)  # 12 bits stored in 16, as most DR detectors write


def _dataset(pixels: np.ndarray, *, sop_class: UID, modality: str, patient_id: str, issuer: str | None,
             patient_name: str, accession: str | None, study_uid: str | None, sop_uid: str | None,
             frames: int = 1) -> Dataset:
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid or generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", "1", "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20261124"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "101500"
    ds.AccessionNumber = accession or ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.Manufacturer = modality, "cxr-fhir test modality"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "19700501", "F"
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.BodyPartExamined = "CHEST" if modality != "CT" else "ABDOMEN"
    ds.ViewPosition, ds.PatientOrientation = "PA", ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    if sop_class in (DX_PRESENTATION, DX_PROCESSING):
        _dx_module(ds, sop_class, bits)
    elif sop_class == SECONDARY_CAPTURE:
        ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored = bits, 8 if bits == 8 else 12
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _dx_module(ds: Dataset, sop_class: UID, bits: int) -> None:
    """The DX Image and DX Detector attributes the IOD requires (so dciodvfy accepts the input)."""
    presentation = sop_class == DX_PRESENTATION
    ds.PresentationIntentType = "FOR PRESENTATION" if presentation else "FOR PROCESSING"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = ("128", "256") if bits == 8 else ("2048", "4096")
    ds.DetectorType, ds.ImagerPixelSpacing = "DIRECT", ["0.143", "0.143"]
    ds.PositionerType = "NONE"
    ds.ImageLaterality = "U"  # the chest is an unpaired structure
    ds.AcquisitionContextSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _write(ds: Dataset, out: Path, syntax: str) -> Path:
    reason = syntax_unavailable(syntax)
    if reason:
        raise RuntimeError(f"cannot make {syntax}: {reason}")
    out.parent.mkdir(parents=True, exist_ok=True)
    uid, tool = SYNTAXES[syntax]
    if syntax in ("implicit", "deflated"):
        ds.file_meta.TransferSyntaxUID = uid
    if syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(out, enforce_file_format=True)
    if tool is not None:
        plain = out.with_suffix(".plain.dcm")
        out.rename(plain)
        try:
            subprocess.run([*tool, str(plain), str(out)], check=True, capture_output=True, timeout=60)
        finally:
            plain.unlink(missing_ok=True)
    return out


def dx_from_png(png: Path, out: Path, *, patient_id: str, issuer: str | None = "HOSP",
                patient_name: str = "DOE^JANE", accession: str | None = None, study_uid: str | None = None,
                sop_uid: str | None = None, syntax: str = "explicit", bits: int | None = None,
                processing: bool = False) -> Path:
    """Write ``png`` as a DX chest PA instance (for presentation unless ``processing``) to ``out``.

    ``bits`` 8 or 16 (12 stored); default 16, and 8 for "jpeg-baseline" (8-bit only). UIDs are
    generated unless given (give ``sop_uid`` to send the same instance twice)."""
    bits = bits or (8 if syntax == "jpeg-baseline" else 16)
    ds = _dataset(_pixels(png, bits), sop_class=DX_PROCESSING if processing else DX_PRESENTATION,
                  modality="DX", patient_id=patient_id, issuer=issuer, patient_name=patient_name,
                  accession=accession, study_uid=study_uid, sop_uid=sop_uid)
    return _write(ds, out, syntax)


def cr_from_png(png: Path, out: Path, *, patient_id: str, issuer: str | None = "HOSP",
                patient_name: str = "DOE^JANE", accession: str | None = None, sop_uid: str | None = None,
                syntax: str = "explicit") -> Path:
    """The same film as a Computed Radiography instance (Modality CR, 12 bits)."""
    ds = _dataset(_pixels(png, 16), sop_class=CR_IMAGE, modality="CR", patient_id=patient_id, issuer=issuer,
                  patient_name=patient_name, accession=accession, study_uid=None, sop_uid=sop_uid)
    return _write(ds, out, syntax)


def non_chest(png: Path, out: Path, *, patient_id: str, modality: str = "CT",
              sop_class: UID = SECONDARY_CAPTURE, syntax: str = "explicit") -> Path:
    """A non-radiograph: Modality CT in a Secondary Capture instance (a class the SCP accepts,
    so the refusal comes from our validation, not from association negotiation)."""
    ds = _dataset(_pixels(png, 16), sop_class=sop_class, modality=modality, patient_id=patient_id, issuer="HOSP",
                  patient_name="DOE^JANE", accession=None, study_uid=None, sop_uid=None)
    return _write(ds, out, syntax)


def multiframe(png: Path, out: Path, *, patient_id: str, frames: int = 2, syntax: str = "explicit") -> Path:
    """A DX-class instance with ``frames`` frames (a cine/tomosynthesis-like object we refuse)."""
    ds = _dataset(_pixels(png, 16), sop_class=DX_PRESENTATION, modality="DX", patient_id=patient_id,
                  issuer="HOSP", patient_name="DOE^JANE", accession=None, study_uid=None, sop_uid=None,
                  frames=frames)
    return _write(ds, out, syntax)


def read_uids(path: Path) -> dict[str, str]:
    """The UIDs of a written file (to find the study it became)."""
    ds = dcmread(path, stop_before_pixels=True)
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID),
            "sop": str(ds.SOPInstanceUID), "sop_class": str(ds.SOPClassUID),
            "syntax": str(ds.file_meta.TransferSyntaxUID)}


def nih_films(shared_data: Path, n: int, folder: str = "images") -> list[Path]:
    """The first ``n`` NIH chest PNGs (sorted, so every run sends the same films). ``folder``:
    "images" (512 x 512, quick) or "originals" (1024 x 1024, as published)."""
    films = sorted((shared_data / "nih" / folder).glob("*.png"))[:n]
    if len(films) < n:
        raise RuntimeError(f"only {len(films)} NIH films under {shared_data}/nih/{folder}, {n} asked")
    return films
