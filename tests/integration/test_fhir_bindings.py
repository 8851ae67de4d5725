"""R4 required bindings over the API, on SQLite and PostgreSQL: a code outside its value set is
refused with 422 and an OperationOutcome naming the element; a transaction holding one stores
nothing; a good code is still taken."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import writing

FHIR = "application/fhir+json"
DIV = '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'


@pytest.fixture
def api(tmp_path, db_url, engine) -> Iterator:
    settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False, _env_file=None)
    with writing(engine) as s:
        token = create_client(s, "integration", ["system/*.*"], actor="test")[1]
    with TestClient(create_app(settings)) as client:
        def call(method: str, url: str, body=None):
            headers = {"Authorization": f"Bearer {token}", "Accept": FHIR, "Content-Type": FHIR}
            return client.request(method, url, headers=headers,
                                  content=json.dumps(body) if body is not None else None)
        yield call


def _patient(**extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": "Bindings"}], "gender": "female", **extra}


GOOD = {
    "Patient": _patient(),
    "ImagingStudy": {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/x"}},
    "DiagnosticReport": {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "XR chest"}},
    "Observation": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
    "Media": {"resourceType": "Media", "status": "completed", "content": {"contentType": "image/png"}},
    "Device": {"resourceType": "Device", "status": "active"},
}

# (resource type, what is changed, the element the outcome must name)
BAD = [
    ("ImagingStudy", {"status": "not-a-status"}, "ImagingStudy.status"),
    ("DiagnosticReport", {"status": "done"}, "DiagnosticReport.status"),
    ("Observation", {"status": "available"}, "Observation.status"),
    ("Media", {"status": "final"}, "Media.status"),
    ("Device", {"status": "broken"}, "Device.status"),
    ("Device", {"deviceName": [{"name": "m", "type": "nickname"}]}, "Device.deviceName[0].type"),
    ("Patient", {"gender": "f"}, "Patient.gender"),
    ("Patient", {"name": [{"family": "Bindings"}, {"family": "B", "use": "alias"}]}, "Patient.name[1].use"),
    ("Patient", {"identifier": [{"use": "primary", "value": "1"}]}, "Patient.identifier[0].use"),
    ("Patient", {"telecom": [{"system": "pigeon", "value": "1"}]}, "Patient.telecom[0].system"),
    ("Patient", {"telecom": [{"system": "phone", "use": "cell", "value": "1"}]}, "Patient.telecom[0].use"),
    ("Patient", {"address": [{"use": "holiday", "city": "X"}]}, "Patient.address[0].use"),
    ("Patient", {"address": [{"type": "virtual", "city": "X"}]}, "Patient.address[0].type"),
    ("Patient", {"link": [{"other": {"reference": "Patient/y"}, "type": "same-as"}]}, "Patient.link[0].type"),
    ("Patient", {"text": {"status": "written", "div": DIV}}, "Patient.text.status"),
    ("Observation", {"subject": {"identifier": {"use": "main", "value": "1"}}},
     "Observation.subject.identifier.use"),
    ("Observation", {"valueQuantity": {"value": 1, "comparator": "=="}}, "Observation.valueQuantity.comparator"),
]


@pytest.mark.parametrize("rtype, change, element", BAD, ids=[b[2] for b in BAD])
def test_a_code_outside_its_required_value_set_is_refused(api, rtype, change, element):
    body = {**GOOD[rtype], **change}
    r = api("POST", f"/fhir/{rtype}", body)
    assert r.status_code == 422, r.text[:500]
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome" and issue["severity"] == "error"
    assert issue["expression"] == [element] and element in issue["diagnostics"]
    found = api("GET", f"/fhir/{rtype}").json()
    assert found["total"] == 0  # nothing stored


def test_update_with_a_bad_code_is_refused_and_good_codes_are_taken(api):
    for rtype, body in GOOD.items():
        assert api("POST", f"/fhir/{rtype}", body).status_code == 201, rtype
    pid = api("GET", "/fhir/Patient").json()["entry"][0]["resource"]["id"]
    r = api("PUT", f"/fhir/Patient/{pid}", {**_patient(gender="F"), "id": pid})
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Patient.gender"]
    assert api("GET", f"/fhir/Patient/{pid}").json()["gender"] == "female"
    sid = api("GET", "/fhir/ImagingStudy").json()["entry"][0]["resource"]["id"]
    r = api("PUT", f"/fhir/ImagingStudy/{sid}", {**GOOD["ImagingStudy"], "id": sid, "status": "done"})
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["ImagingStudy.status"]
    r = api("PUT", f"/fhir/ImagingStudy/{sid}", {**GOOD["ImagingStudy"], "id": sid, "status": "cancelled"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    two = api("POST", "/fhir/Patient", _patient(name=[{"family": "Bindings", "use": "nickname"}],
                                                 telecom=[{"system": "sms", "use": "mobile", "value": "1"}]))
    assert two.status_code == 201


def test_a_transaction_with_a_bad_code_stores_nothing(api):
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b6e2e5e-0000-4000-8000-000000000001",
         "resource": _patient(name=[{"family": "Txbinding"}]), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "ImagingStudy", "status": "not-a-status",
                      "subject": {"reference": "urn:uuid:0b6e2e5e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "ImagingStudy"}}]}
    r = api("POST", "/fhir", tx)
    assert r.status_code == 422, r.text[:500]
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["ImagingStudy.status"] and "nothing was stored" in issue["diagnostics"]
    assert api("GET", "/fhir/Patient?family=txbinding").json()["total"] == 0
    assert api("GET", "/fhir/ImagingStudy").json()["total"] == 0
    tx["entry"][1]["resource"]["status"] = "registered"
    r = api("POST", "/fhir", tx)
    assert r.status_code == 200 and [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "201"]
    assert api("GET", "/fhir/Patient?family=txbinding").json()["total"] == 1
