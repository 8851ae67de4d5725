"""The source image's header as the evidence our objects reference and copy patient/study from."""

from __future__ import annotations

import copy

from pydicom import Dataset

# Type 2 attributes of the patient and study modules that highdicom reads from the evidence: a
# modality may leave them out (they are then present, empty, as PS3.3 lets a type 2 be).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def evidence_of(source: Dataset) -> Dataset:
    """A header-only copy of ``source`` (no pixels: the builders never need them), with the type 2
    attributes present. Raises ValueError when the UIDs that any reference needs are missing."""
    missing = [k for k in _REQUIRED if not str(source.get(k, "") or "").strip()]
    if missing:
        raise ValueError(f"the source instance lacks {', '.join(missing)}")
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:  # Pixel Data and its kin
            header.add(copy.deepcopy(element))  # the caller's dataset stays untouched
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    return header


def library_entry(evidence: Dataset) -> Dataset:
    """The image as TID 1500's image library describes it. highdicom writes the TID 1603 projection
    descriptors (patient orientation, imager pixel spacing) for a CR/DX and fails when the film lacks
    them, as many do; such a film is then listed without them (they are optional in TID 1602)."""
    orientation, spacing = evidence.get("PatientOrientation"), evidence.get("ImagerPixelSpacing")
    if orientation is not None and len(orientation) == 2 and spacing is not None and len(spacing) == 2:
        return evidence
    entry = Dataset()
    entry.update(evidence)
    entry.Modality = "OT"  # only read by highdicom to choose the descriptors; not written anywhere
    return entry
