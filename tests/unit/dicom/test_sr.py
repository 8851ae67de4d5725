"""The TID 1500 SR of a report version: valid for dciodvfy, and what a PACS or viewer reads back from it
(with highdicom's own parser) is exactly the analysis: findings, probabilities, thresholds, regions,
references, the algorithm and the verification state."""

from __future__ import annotations

import io
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cxr_fhir.dicom.sr import NOT_FOR_DIAGNOSTIC_USE, measurement_report
from cxr_fhir.dicom.uids import object_uid
from cxr_fhir.domain.report import UNUSUAL_FILM
from support.dciodvfy import dciodvfy_errors, dciodvfy_warnings, needs_dciodvfy
from support.part10 import encoded


def build(rows, source, **kw: Any) -> pydicom.Dataset:
    kw.setdefault("not_for_diagnostic_use", True)
    return measurement_report(rows.patient, rows.study, rows.analysis, rows.report, source.dataset, **kw)


def reread(ds: pydicom.Dataset) -> hd.sr.Comprehensive3DSR:
    """Through bytes, as the PACS would store and serve it, then highdicom's SR reader."""
    sr = hd.sr.srread(io.BytesIO(encoded(ds)))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    return sr


def texts(item) -> list[tuple[str, str]]:
    """Every TEXT item in a content tree, as (concept meaning, value)."""
    out = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            out.append((child.ConceptNameCodeSequence[0].CodeMeaning, child.TextValue))
        out += texts(child)
    return out


def algorithm_of(measurement) -> dict[str, str]:
    return {i.name.meaning: i.value for i in measurement[0].ContentSequence if i.ValueType == "TEXT"}


@needs_dciodvfy
@pytest.mark.parametrize("state", ["preliminary", "final"])
@pytest.mark.parametrize("regions", [True, False])
def test_dciodvfy_finds_no_error(rows, final_rows, source, state, regions):
    chosen = rows if state == "preliminary" else final_rows
    ds = build(chosen, source, show_regions=regions)
    assert dciodvfy_errors(ds) == []
    # Warnings are tolerated but few: only our private coding scheme and the film's own gaps.
    assert len(dciodvfy_warnings(ds)) <= 8


def test_one_group_per_reported_finding_with_probability_threshold_and_verdict(rows, source):
    sr = reread(build(rows, source, show_regions=False))
    groups = sr.content.get_image_measurement_groups()
    assert sr.content.get_planar_roi_measurement_groups() == []
    # The top three plus Mass, which is outside them but at its threshold.
    assert [g.finding_type.meaning for g in groups] == ["Pleural effusion", "Cardiomegaly",
                                                        "Pleural thickening", "Mass of lung"]
    expected = {"Pleural effusion": (0.81, 0.42, "Present"), "Cardiomegaly": (0.38, 0.5, "Absent"),
                "Pleural thickening": (0.2, 0.3, "Absent"), "Mass of lung": (0.16, 0.15, "Present")}
    for g in groups:
        values = {m.name.meaning: (m.value, m.unit.value) for m in g.get_measurements()}
        p, t, verdict = expected[g.finding_type.meaning]
        assert values == {"Probability": (p, "1"), "Threshold Value": (t, "1")}
        evaluations = {q.name.meaning: q.value.meaning for q in g.get_qualitative_evaluations()}
        assert evaluations[g.finding_type.meaning] == verdict
        assert [s.referenced_sop_instance_uid for s in g.source_images] == [source.dataset.SOPInstanceUID]


def test_findings_are_coded_from_the_catalogue(rows, source):
    sr = reread(build(rows, source, show_regions=False))
    codes = {g.finding_type.meaning: (g.finding_type.value, g.finding_type.scheme_designator)
             for g in sr.content.get_image_measurement_groups()}
    assert codes["Pleural effusion"] == ("60046008", "SCT")
    assert codes["Pleural thickening"] == ("Pleural_Thickening", "99CXRFHIR")  # no SNOMED concept known
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CXRFHIR"


def test_boxes_become_scoord_polylines_on_the_source_image(rows, source):
    sr = reread(build(rows, source))
    planar = sr.content.get_planar_roi_measurement_groups()
    assert sorted(g.finding_type.meaning for g in planar) == ["Mass of lung", "Pleural effusion", "Pleural effusion"]
    for g, box in zip([g for g in planar if g.finding_type.meaning == "Pleural effusion"],
                      rows.analysis.boxes[:2], strict=True):
        x1, y1, x2, y2 = box["x1"], box["y1"], box["x2"], box["y2"]
        assert g.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(g.roi.value, [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])
        ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.dataset.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == source.dataset.SOPClassUID
        assert {m.name.meaning: m.value for m in g.get_measurements()}["Probability"] == 0.81
    # Findings without boxes keep a group that references the whole image.
    assert [g.finding_type.meaning for g in sr.content.get_image_measurement_groups()] == \
        ["Cardiomegaly", "Pleural thickening"]


def test_algorithm_observer_and_equipment_name_the_model(rows, source):
    sr = reread(build(rows, source))
    a = rows.analysis
    for g in sr.content.get_image_measurement_groups() + sr.content.get_planar_roi_measurement_groups():
        for m in g.get_measurements():
            algo = algorithm_of(m)
            assert algo["Algorithm Name"] == a.model_name and algo["Algorithm Version"] == a.model_version
            assert algo["Algorithm Parameters"] == f"manifest_sha256={a.manifest_sha256}"
    device = sr.content.get_observer_contexts()[0]
    assert device.observer_type.meaning == "Device"
    assert device.observer_identifying_attributes.name == a.model_name
    assert device.observer_identifying_attributes.manufacturer_name == "cxr-fhir"
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "cxr-fhir"]
    assert len(ours) == 1 and ours[0].ManufacturerModelName == a.model_name
    assert ours[0].DeviceSerialNumber == a.manifest_sha256 and a.model_version in ours[0].SoftwareVersions


def test_references_patient_and_study_follow_the_source(rows, source):
    sr = reread(build(rows, source))
    src = source.dataset
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber"):
        assert sr[keyword].value == src[keyword].value, keyword
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID and sr.Modality == "SR"


def test_preliminary_is_complete_but_unverified(rows, source):
    sr = reread(build(rows, source))
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in sr and "PredecessorDocumentsSequence" not in sr


@pytest.mark.parametrize("status", ["final", "amended"])
def test_a_confirmed_report_is_verified_by_the_doctor_and_supersedes_the_draft(final_rows, source, status):
    final_rows.report.status = status
    sr = reread(build(final_rows, source))
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    observer = sr.VerifyingObserverSequence[0]
    assert observer.VerifyingObserverName == "dr.house^"
    assert observer.VerificationDateTime == "20261124110005"
    previous = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert previous.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == object_uid("report-1", 1, "sr")
    assert previous.SeriesInstanceUID == sr.SeriesInstanceUID


def test_not_for_diagnostic_use_and_unusual_film_are_stated(rows, source):
    sr = reread(build(rows, source))
    said = texts(sr)
    assert ("Comment", NOT_FOR_DIAGNOSTIC_USE) in said
    assert ("Unusual film, read with care", UNUSUAL_FILM) in said
    assert ("Conclusion", rows.report.conclusion) in said
    assert ("AI triage priority", "URGENT") in said
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription


def test_without_the_flags_nothing_is_claimed(rows, source):
    rows.analysis.unusual_film = False
    sr = reread(build(rows, source, not_for_diagnostic_use=False))
    meanings = {m for m, _ in texts(sr)}
    assert "Comment" not in meanings and "Unusual film, read with care" not in meanings
    assert "NOT FOR DIAGNOSTIC USE" not in sr.SeriesDescription


def test_uids_are_fixed_per_version_and_a_rebuild_is_the_same_bytes(rows, final_rows, source):
    first, again = build(rows, source), build(rows, source)
    assert first.SOPInstanceUID == object_uid("report-1", 1, "sr")
    assert first.SeriesInstanceUID == object_uid("report-1", 0, "sr-series")
    buf1, buf2 = io.BytesIO(), io.BytesIO()
    first.save_as(buf1, enforce_file_format=True)
    again.save_as(buf2, enforce_file_format=True)
    assert buf1.getvalue() == buf2.getvalue()
    verified = build(final_rows, source)
    assert verified.SeriesInstanceUID == first.SeriesInstanceUID  # every version in one series
    assert verified.SOPInstanceUID == object_uid("report-1", 2, "sr") != first.SOPInstanceUID
    assert verified.InstanceNumber == 2


def test_a_source_without_its_uids_is_refused(rows, synthetic_source):
    del synthetic_source.dataset.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build(rows, synthetic_source)


@needs_dciodvfy
def test_the_validator_does_catch_a_broken_sr(rows, synthetic_source):
    ds = build(rows, synthetic_source)
    del ds.CompletionFlag  # type 1 in the SR Document General module
    assert any("CompletionFlag" in e for e in dciodvfy_errors(ds))


def test_the_source_dataset_is_left_untouched(rows, source):
    before = io.BytesIO()
    source.dataset.save_as(before, enforce_file_format=True)
    build(rows, source)
    after = io.BytesIO()
    source.dataset.save_as(after, enforce_file_format=True)
    assert after.getvalue() == before.getvalue()
