"""The required-binding check: every listed element, nested datatypes, indexes in the paths."""

from __future__ import annotations

from cxr_fhir.fhir import bindings
from cxr_fhir.fhir.bindings import violations


def test_good_resources_have_no_violations():
    assert violations({"resourceType": "ImagingStudy", "status": "available"}) == []
    assert violations({"resourceType": "Patient", "gender": "other", "name": [{"use": "maiden"}],
                       "identifier": [{"use": "secondary"}], "telecom": [{"system": "email", "use": "work"}],
                       "address": [{"use": "billing", "type": "both"}], "link": [{"type": "seealso"}],
                       "text": {"status": "generated"}}) == []
    assert violations({"resourceType": "Spaceship", "status": "anything"}) == []  # nothing listed, nothing refused


def test_each_violation_names_its_element_value_and_value_set():
    found = violations({
        "resourceType": "Patient", "gender": "x", "name": [{"use": "official"}, {"use": "bad"}],
        "identifier": [{"use": "foo", "assigner": {"identifier": {"use": "zz"}}}],
        "contact": [{"telecom": [{"system": "pigeon"}], "gender": "m"}],
        "generalPractitioner": [{"identifier": {"use": "old"}}],
        "contained": [{"resourceType": "Observation", "status": "nah"}]})
    assert [(p, v) for p, v, _ in found] == [
        ("Patient.gender", "x"), ("Patient.name[1].use", "bad"), ("Patient.contact[0].telecom[0].system", "pigeon"),
        ("Patient.contact[0].gender", "m"), ("Patient.identifier[0].use", "foo"),
        ("Patient.identifier[0].assigner.identifier.use", "zz"), ("Patient.contained[0].status", "nah")]
    assert found[0][2] == bindings.ADMINISTRATIVE_GENDER
    assert found[-1][2] == bindings.OBSERVATION_STATUS


def test_the_value_sets_are_r4s():
    assert bindings.IMAGING_STUDY_STATUS == ("registered", "available", "cancelled", "entered-in-error", "unknown")
    assert "appended" in bindings.DIAGNOSTIC_REPORT_STATUS and "appended" not in bindings.OBSERVATION_STATUS
    assert violations({"resourceType": "Media", "status": "final"})[0][0] == "Media.status"
    assert violations({"resourceType": "Device", "status": "inactive", "udiCarrier": [{"entryType": "scan"}]}) == [
        ("Device.udiCarrier[0].entryType", "scan", bindings.UDI_ENTRY_TYPE)]
