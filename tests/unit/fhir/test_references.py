"""R4 reference type constraints: which target types a Reference element allows, everywhere in a resource."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.observation import Observation

from cxr_fhir.fhir.references import target_type, wrong_targets


@pytest.mark.parametrize(("reference", "expected"), [
    ("Patient/1", "Patient"),
    ("Patient/1/_history/2", "Patient"),
    ("http://example.org/fhir/Patient/1", "Patient"),
    ("https://example.org/fhir/Device/d-1/_history/3", "Device"),
    ("Patient/1/", "Patient"),
    ("#contained-1", None),
    ("urn:uuid:8d2f1b4c-1111-4222-8333-944455556666", None),
    ("urn:oid:1.2.3", None),
    ("Patient", None),
    ("patient/1", None),  # names no type (types are capitalised): nothing stored answers to it
    ("", None),
])
def test_the_type_a_reference_names(reference, expected):
    assert target_type(reference) == expected


def _observation(**extra) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **extra}


def test_allowed_targets_and_unchecked_references_pass():
    assert wrong_targets("Observation", _observation(
        device={"reference": "Device/d"},
        subject={"reference": "http://h/fhir/Patient/1/_history/2"},
        hasMember=[{"reference": "Observation/2"}],
        focus=[{"reference": "Practitioner/p"}],  # Observation.focus is Reference(Any)
        derivedFrom=[{"reference": "urn:uuid:8d2f1b4c-1111-4222-8333-944455556666"}],
        partOf=[{"reference": "#d1"}],
        performer=[{"display": "Dr. Who"}, {"identifier": {"value": "x"}}],
        extension=[{"url": "http://x", "valueReference": {"reference": "Patient/3"}}],
    )) == []


def test_each_wrong_target_names_its_element_and_what_is_allowed():
    found = wrong_targets("Observation", _observation(
        device={"reference": "Patient/X"},
        hasMember=[{"reference": "Observation/1"}, {"reference": "http://h/fhir/Device/2"}],
        identifier=[{"value": "1", "assigner": {"reference": "Patient/9"}}],
        component=[{"code": {"text": "c"}, "valueString": "x"}],
        contained=[{"resourceType": "Device", "id": "d1", "owner": {"reference": "Patient/1"}}],
    ))
    assert {(path, ref) for path, ref, _ in found} == {
        ("Observation.device", "Patient/X"),
        ("Observation.hasMember[1]", "http://h/fhir/Device/2"),
        ("Observation.identifier[0].assigner", "Patient/9"),
        ("Observation.contained[0].owner", "Patient/1"),
    }
    allowed = {path: types for path, _, types in found}
    assert allowed["Observation.device"] == ("Device", "DeviceMetric")
    assert allowed["Observation.contained[0].owner"] == ("Organization",)


def test_a_validated_model_is_walked_as_its_json():
    body = _observation(device={"reference": "Patient/X"})
    assert wrong_targets("Observation", Observation.model_validate(body)) == wrong_targets("Observation", body)


@pytest.mark.parametrize(("resource", "path"), [
    ({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
      "result": [{"reference": "Patient/X"}]}, "DiagnosticReport.result[0]"),
    ({"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Practitioner/x"}},
     "ImagingStudy.subject"),
    ({"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/p"},
      "series": [{"uid": "1.2", "modality": {"code": "DX"}, "performer": [{"actor": {"reference": "Patient/p"}}],
                  "specimen": [{"reference": "Specimen/s"}, {"reference": "Patient/p"}]}]},
     "ImagingStudy.series[0].specimen[1]"),
    ({"resourceType": "Media", "status": "completed", "content": {"contentType": "image/png"},
      "subject": {"reference": "Observation/o"}}, "Media.subject"),
])
def test_backbone_elements_and_lists_of_other_types(resource, path):
    assert [p for p, _, _ in wrong_targets(resource["resourceType"], resource)] == [path]
