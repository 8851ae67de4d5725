"""A report version as a DICOM Comprehensive 3D SR, TID 1500 Measurement Report (IHE AI Results).

One finding group per reported finding (``domain.report.reported_findings``: the top three, as the
FHIR Observations, plus any other finding at or above its threshold): the finding as the group's
finding type, present/absent at the operating point as a qualitative evaluation, the calibrated
probability and the threshold as unitless measurements, each naming the algorithm. A finding with
boxes (and ``show_regions``) gets one TID 1410 planar ROI group per box, its region a closed SCOORD
POLYLINE on the source image; TID 1410 holds one region, so k boxes are k groups with the same
finding and measurements. Otherwise a TID 1501 group references the source image.

Status (PS3.3 C.17.2): the AI's content is whole from the start, so every version is COMPLETE; what a
doctor's confirmation changes is the verification: preliminary -> UNVERIFIED + PRELIMINARY,
final/amended -> VERIFIED (by report.confirmed_by at report.confirmed_at) + FINAL. A version after
the first names the one before as its predecessor document.

UIDs: the instance is fixed per report version, the series per report (all versions in one series),
so a retried delivery is the same object. Times come from the rows, never the clock, so a retry is
byte for byte the same dataset too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from ..domain.analysis import Box, Finding
from ..domain.report import UNUSUAL_FILM, reported_findings
from ..records.tables import Analysis, Patient, Report, Study
from . import codes as c
from .equipment import contributing_equipment, stamp
from .source import evidence_of, library_entry
from .uids import object_uid, tracking_uid, uuid_uid

SERIES_NUMBER = 9901
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE: AI research model, not a medical device."
VERIFIED_STATUSES = frozenset({"final", "amended"})
Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def algorithm(analysis: Analysis) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=analysis.model_name, family=c.ALGORITHM_FAMILY,
                                         version=analysis.model_version,
                                         parameters=[f"manifest_sha256={analysis.manifest_sha256}"])


def _observation_context(analysis: Analysis) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uuid_uid(f"device/{analysis.manifest_sha256}"), name=analysis.model_name[:64],
        manufacturer_name=c.MANUFACTURER, model_name=f"{analysis.model_name} {analysis.model_version}"[:64],
        serial_number=analysis.manifest_sha256[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=c.DEVICE, observer_identifying_attributes=device))


def _measurements(finding: Finding, algo: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    return [hd.sr.Measurement(name=c.PROBABILITY, value=finding.probability, unit=c.NO_UNITS, algorithm_id=algo),
            hd.sr.Measurement(name=c.THRESHOLD, value=finding.threshold, unit=c.NO_UNITS, algorithm_id=algo)]


def _evaluation(finding: Finding) -> hd.sr.QualitativeEvaluation:
    concept = c.finding_concept(finding.finding)
    return hd.sr.QualitativeEvaluation(name=concept, value=c.PRESENT if finding.present else c.ABSENT)


def _polyline(box: Box) -> np.ndarray:
    """The box as a closed polyline in image pixel coordinates (column, row), as SCOORD wants."""
    return np.array([[box.x1, box.y1], [box.x2, box.y1], [box.x2, box.y2], [box.x1, box.y2], [box.x1, box.y1]],
                    dtype=float)


def _groups(analysis: Analysis, finding: Finding, boxes: Sequence[Box], source: Dataset) -> list[Group]:
    algo = algorithm(analysis)
    concept = c.finding_concept(finding.finding)
    measurements, evaluations = _measurements(finding, algo), [_evaluation(finding)]
    if not boxes:
        tracking = hd.sr.TrackingIdentifier(uid=tracking_uid(analysis.id, finding.finding),
                                            identifier=concept.meaning)
        image = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
        return [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, source_images=[image], finding_type=concept, algorithm_id=algo,
            measurements=measurements, qualitative_evaluations=evaluations)]
    out: list[Group] = []
    for n, box in enumerate(boxes, start=1):
        tracking = hd.sr.TrackingIdentifier(uid=tracking_uid(analysis.id, f"{finding.finding}#{n}"),
                                            identifier=f"{concept.meaning} region {n}")
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_polyline(box),
                                   source_image=hd.sr.SourceImageForRegion(source.SOPClassUID,
                                                                           source.SOPInstanceUID))
        out.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=concept, algorithm_id=algo,
            measurements=measurements, qualitative_evaluations=evaluations))
    return out


def _notes(analysis: Analysis, report: Report, not_for_diagnostic_use: bool) -> hd.sr.ContainerContentItem:
    """TID 1500's root "Qualitative Evaluations" container: the conclusion, the priority, the unusual-film
    caution and the not-for-diagnostic-use statement, as a reader of the SR sees them."""
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(c.CONCLUSION, report.conclusion or "(none)", hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(c.PRIORITY, str(analysis.priority).upper(), hd.sr.RelationshipTypeValues.CONTAINS)]
    if analysis.unusual_film:
        items.append(hd.sr.TextContentItem(c.UNUSUAL_FILM, UNUSUAL_FILM, hd.sr.RelationshipTypeValues.CONTAINS))
    if not_for_diagnostic_use:
        items.append(hd.sr.TextContentItem(c.COMMENT, NOT_FOR_DIAGNOSTIC_USE, hd.sr.RelationshipTypeValues.CONTAINS))
    container = hd.sr.ContainerContentItem(c.QUALITATIVE_EVALUATIONS,
                                          relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _content(analysis: Analysis, report: Report, source: Dataset, not_for_diagnostic_use: bool,
             show_regions: bool) -> hd.sr.MeasurementReport:
    boxes = [Box.from_dict(b) for b in analysis.boxes] if show_regions else []
    groups: list[Group] = []
    for finding in reported_findings(analysis.top3, analysis.probabilities, analysis.thresholds):
        groups += _groups(analysis, finding, [b for b in boxes if b.finding == finding.finding], source)
    content = hd.sr.MeasurementReport(observation_context=_observation_context(analysis),
                                      procedure_reported=c.CHEST_XRAY, imaging_measurements=groups,
                                      referenced_images=[library_entry(source)])
    content[0].ContentSequence.append(_notes(analysis, report, not_for_diagnostic_use))
    return content


def _predecessor(report: Report, study_uid: str) -> list[Dataset]:
    """The SR of the version before this one, which this one supersedes (same deterministic UIDs)."""
    if report.version_id <= 1:
        return []
    pre = Dataset()
    pre.SOPClassUID = Comprehensive3DSRStorage
    pre.SOPInstanceUID = object_uid(report.id, report.version_id - 1, "sr")
    pre.StudyInstanceUID, pre.SeriesInstanceUID = study_uid, object_uid(report.id, 0, "sr-series")
    return [pre]


def _stamp(sr: Dataset, report: Report, verified: bool) -> None:
    when: datetime = report.confirmed_at if verified and report.confirmed_at else report.issued
    stamp(sr, when)
    if verified:
        sr.VerifyingObserverSequence[0].VerificationDateTime = when.strftime("%Y%m%d%H%M%S")


def _observer_name(username: str | None) -> str:
    """A username as a PN: its family-name component (the trailing caret says so, PS3.5 6.2)."""
    name = (username or "unknown").replace("\\", " ")[:60]
    return name if "^" in name else f"{name}^"


def measurement_report(patient: Patient, study: Study, analysis: Analysis, report: Report, source: Dataset, *,
                       not_for_diagnostic_use: bool, show_regions: bool = True) -> Dataset:
    """The SR of one report version. ``patient`` and ``study`` are accepted for symmetry with the other
    builders; the patient and study modules are copied from ``source``, as the PACS knows them."""
    del patient, study  # the source header is what the PACS files the SR under
    evidence = evidence_of(source)
    verified = str(report.status) in VERIFIED_STATUSES
    description = "AI result (cxr-fhir)" + (" - NOT FOR DIAGNOSTIC USE" if not_for_diagnostic_use else "")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[evidence], content=_content(analysis, report, evidence, not_for_diagnostic_use, show_regions),
        series_instance_uid=object_uid(report.id, 0, "sr-series"), series_number=SERIES_NUMBER,
        sop_instance_uid=object_uid(report.id, report.version_id, "sr"), instance_number=report.version_id,
        manufacturer=c.MANUFACTURER, is_complete=True, is_final=verified, is_verified=verified,
        verifying_observer_name=_observer_name(report.confirmed_by) if verified else None,
        verifying_organization=(str(evidence.get("InstitutionName") or "") or c.MANUFACTURER) if verified else None,
        previous_versions=_predecessor(report, evidence.StudyInstanceUID) or None,
        contributing_equipment=[contributing_equipment(analysis)],
        series_description=description, software_versions=c.SOFTWARE_VERSION)
    _stamp(sr, report, verified)
    sr.CodingSchemeIdentificationSequence = [c.local_scheme()]
    return sr
