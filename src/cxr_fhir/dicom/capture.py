"""The overlay as a DICOM Secondary Capture (highdicom SCImage), in a new series of the source's study.

RGB, 8 bits, burned-in annotation YES, conversion type WSD (workstation). The instance UID is fixed
per report version and the series per report (every version in one series), as for the SR.
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset

from ..domain.analysis import Box
from ..domain.report import reported_findings
from ..imaging import XRayImage
from ..records.tables import Analysis, Patient, Report, Study
from . import codes as c
from .equipment import contributing_equipment, stamp
from .overlay import render
from .source import evidence_of
from .uids import object_uid

SERIES_NUMBER = 9902
BANNER = "AI RESULT - NOT FOR DIAGNOSTIC USE"
# Where the source says nothing, the display convention of a chest film (patient's left to the
# right of the image, feet down): needed to build the object, then emptied again (type 2).
_CONVENTION = ("L", "F")


def _orientation(evidence: Dataset) -> tuple[str, str] | None:
    value = evidence.get("PatientOrientation")
    if value is not None and len(value) == 2:
        try:
            hd.PatientOrientationValuesBiped(value[0]), hd.PatientOrientationValuesBiped(value[1])
        except ValueError:
            return None
        return str(value[0]), str(value[1])
    return None


def secondary_capture(patient: Patient, study: Study, analysis: Analysis, report: Report, source: Dataset,
                      image: XRayImage) -> Dataset:
    """The overlay of one report version. ``image`` is the film decoded from ``source``; the boxes are
    in its pixel coordinates. Patient and study modules come from ``source``, as the PACS knows them."""
    del patient, study
    evidence = evidence_of(source)
    findings = reported_findings(analysis.top3, analysis.probabilities, analysis.thresholds)
    boxes = [Box.from_dict(b) for b in analysis.boxes]
    pixels = render(image.pixels, findings, boxes, str(analysis.priority), BANNER)
    orientation = _orientation(evidence)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=evidence, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=object_uid(report.id, 0, "sc-series"),
        series_number=SERIES_NUMBER, sop_instance_uid=object_uid(report.id, report.version_id, "sc"),
        instance_number=report.version_id, manufacturer=c.MANUFACTURER,
        patient_orientation=orientation or _CONVENTION,
        series_description="AI result overlay (cxr-fhir) - NOT FOR DIAGNOSTIC USE",
        software_versions=c.SOFTWARE_VERSION, contributing_equipment=[contributing_equipment(analysis)])
    if orientation is None:
        sc["PatientOrientation"].value = None
    # The film passed the chest-radiograph gate: saying so tells a validator why Laterality (type 2C,
    # for paired body parts only) is absent.
    sc.BodyPartExamined = "CHEST"
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.ImageComments = f"AI result of report {report.id} version {report.version_id}; {analysis.model_name} " \
                       f"{analysis.model_version}"
    when = report.confirmed_at or report.issued
    stamp(sc, when)
    sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture = sc.ContentDate, sc.ContentTime
    _reference(sc, evidence)
    return sc


def _reference(sc: Dataset, evidence: Dataset) -> None:
    """The film this overlay was made from (General Image module, Source Image Sequence)."""
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = evidence.SOPClassUID, evidence.SOPInstanceUID
    sc.SourceImageSequence = [item]
    sc.DerivationDescription = "AI result overlay: boxes, findings and priority burned into the film"
