"""The conditional create of the Patient, with and without an MRN; the delivery-status extension."""

from __future__ import annotations

from unittest.mock import ANY

from cxr_fhir.fhir import mapping
from cxr_fhir.fhir.bundles import ehr_transaction
from cxr_fhir.fhir.mapping import PATIENT_ID_SYSTEM
from cxr_fhir.records.tables import Analysis, Patient, Report, Study

TOP3 = [{"finding": "Effusion", "probability": 0.8, "threshold": 0.5, "present": True}]


def _rows(mrn):
    patient = Patient(id="p-1", mrn=mrn, mrn_system="urn:oid:1.2.3", family="Doe", sex="female")
    study = Study(id="s-1", patient_id="p-1", content_sha256="a" * 64, media_type="image/png", size_bytes=1,
                  study_uid="1.2.3.4", status="analyzed")
    analysis = Analysis(id="a-1", study_id="s-1", model_name="m", model_version="1", manifest_sha256="b" * 64,
                        priority="routine", top3=TOP3)
    report = Report(id="r-1", study_id="s-1", analysis_id="a-1", conclusion="x")
    return patient, study, analysis, report


def _patient_entry(mrn):
    bundle = mapping.to_wire(ehr_transaction(*_rows(mrn)))
    return bundle["entry"][0]


def test_patient_with_mrn_is_matched_by_mrn_only():
    entry = _patient_entry("M-1")
    assert entry["request"]["ifNoneExist"] == "identifier=urn%3Aoid%3A1.2.3%7CM-1"
    assert [i["system"] for i in entry["resource"]["identifier"]] == ["urn:oid:1.2.3"]


def test_patient_without_mrn_is_matched_by_our_id():
    entry = _patient_entry(None)
    assert entry["request"]["ifNoneExist"] == "identifier=urn%3Acxr-fhir%3Apatient%7Cp-1"
    assert [(i["system"], i["value"]) for i in entry["resource"]["identifier"]] == [(PATIENT_ID_SYSTEM, "p-1")]


def test_delivery_status_extension_only_when_given():
    patient, study, analysis, report = _rows("M-1")
    plain = mapping.to_wire(mapping.diagnostic_report(report, analysis, study, []))
    assert "extension" not in plain
    marked = mapping.to_wire(mapping.diagnostic_report(report, analysis, study, [], delivery_status="failed"))
    assert marked["extension"] == [{"url": "urn:cxr-fhir:ehr-delivery-status", "valueCode": "failed"}]
    assert marked == {**plain, "extension": ANY}
