"""A reference cannot carry a resource past the token's scopes, on SQLite and PostgreSQL.

Write: a reference to a type its element does not allow (Observation.device -> Patient) is refused
with 422 naming the element, so _include cannot be pointed at a type of the writer's choosing.
Read: whatever an _include, _revinclude or a batch search entry returns is checked by the type
each resource IS, so data stored before the write check (or a reference R4 allows, such as an
ImagingStudy whose subject is a Device) hands out nothing the token could not read itself.
Bodies holding one key twice are refused before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from sqlmodel import func, select

from cxr_fhir.app import create_app
from cxr_fhir.records.tables import FhirResource
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import reading, writing
from cxr_fhir.storage.fhir import search, store

FHIR = "application/fhir+json"
# The token of the finding: Observations and Devices, never a Patient.
ATTACKER = ["system/Observation.read", "system/Observation.write", "system/Device.read"]


class Api:
    def __init__(self, client: TestClient, engine):
        self.client, self.engine = client, engine
        self.admin = self.token("admin", ["system/*.*"])

    def token(self, name: str, scopes: list[str]) -> str:
        with writing(self.engine) as s:
            return create_client(s, name, scopes, actor="test")[1]

    def __call__(self, method: str, url: str, body=None, token: str | None = None):
        headers = {"Authorization": f"Bearer {token or self.admin}", "Accept": FHIR}
        content = None
        if body is not None:
            headers["Content-Type"] = FHIR
            content = body if isinstance(body, bytes) else json.dumps(body)
        return self.client.request(method, url, headers=headers, content=content)


@pytest.fixture
def api(tmp_path, db_url, engine) -> Iterator[Api]:
    settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False, _env_file=None)
    with TestClient(create_app(settings)) as client:
        yield Api(client, engine)


def _patient(api: Api) -> str:
    r = api("POST", "/fhir/Patient", {"resourceType": "Patient", "name": [{"family": "Victim"}], "gender": "female"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _observation(**extra) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **extra}


def _count(engine, resource_type: str) -> int:
    with reading(engine) as s:
        return s.exec(select(func.count()).select_from(FhirResource)
                      .where(FhirResource.resource_type == resource_type)).one()


def _types(bundle: dict) -> list[tuple[str, str]]:
    return [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle.get("entry", [])]


def _plant(engine, resource_type: str, rid: str, content: dict) -> None:
    """As stored before references were checked (or by a path that does not check them)."""
    with writing(engine) as s:
        store.put(s, resource_type, rid, content, origin="api")


# -- write: the target type of every reference -----------------------------------------------------

def test_the_attack_of_the_finding_is_refused_at_the_write(api, engine):
    pid = _patient(api)
    attacker = api.token("attacker", ATTACKER)
    assert api("GET", f"/fhir/Patient/{pid}", token=attacker).status_code == 403

    r = api("POST", "/fhir/Observation", _observation(device={"reference": f"Patient/{pid}"}), token=attacker)
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Observation.device"]
    assert "Device | DeviceMetric" in outcome["issue"][0]["diagnostics"]
    assert _count(engine, "Observation") == 0
    # Nothing for the include to follow.
    found = api("GET", "/fhir/Observation?_include=Observation:device", token=attacker)
    assert found.status_code == 200 and "entry" not in found.json()
    # An absolute URL naming the same Patient is no way round.
    r = api("POST", "/fhir/Observation", _observation(device={"reference": f"http://elsewhere/fhir/Patient/{pid}"}),
            token=attacker)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Observation.device"]


@pytest.mark.parametrize(("resource", "path"), [
    ({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "XR chest"},
      "result": [{"reference": "Observation/o-1"}, {"reference": "Patient/X"}]}, "DiagnosticReport.result[1]"),
    ({"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Practitioner/x"}},
     "ImagingStudy.subject"),
    ({"resourceType": "Media", "status": "completed", "content": {"contentType": "image/png"},
      "subject": {"reference": "Observation/x"}}, "Media.subject"),
    (_observation(contained=[{"resourceType": "Device", "id": "d1", "owner": {"reference": "Patient/X"}}],
                  device={"reference": "#d1"}), "Observation.contained[0].owner"),
])
def test_a_reference_to_a_type_its_element_does_not_allow_is_422(api, engine, resource, path):
    rtype = resource["resourceType"]
    r = api("POST", f"/fhir/{rtype}", resource)
    assert r.status_code == 422, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["expression"] == [path]
    assert _count(engine, rtype) == 0
    # The same through an update.
    r = api("PUT", f"/fhir/{rtype}/planted-1", {**resource, "id": "planted-1"})
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == [path]
    assert _count(engine, rtype) == 0


def test_allowed_targets_local_and_unresolved_references_are_still_taken(api):
    ok = [
        _observation(device={"reference": "Device/d-1"}, subject={"reference": "Patient/p-1"}),
        _observation(contained=[{"resourceType": "Device", "id": "d1"}], device={"reference": "#d1"}),
        _observation(device={"reference": "urn:uuid:8d2f1b4c-1111-4222-8333-944455556666"}),
        {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Device/d-1"}},
        {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "XR"},
         "result": [{"reference": "Observation/o-1"}]},
        {"resourceType": "Media", "status": "completed", "content": {"contentType": "image/png"},
         "subject": {"reference": "Practitioner/p-1"}},
    ]
    for body in ok:
        r = api("POST", f"/fhir/{body['resourceType']}", body)
        assert r.status_code == 201, (body, r.text)
    # ...and a wrong one refused before that was not a question of a missing target.
    assert api("POST", "/fhir/Observation", _observation(device={"reference": "Patient/p-1"})).status_code == 422


def test_a_transaction_reference_resolved_to_a_wrong_type_stores_nothing(api, engine):
    patient = "urn:uuid:11111111-2222-4333-8444-555555555555"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient, "resource": {"resourceType": "Patient", "name": [{"family": "T"}], "gender": "male"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": _observation(device={"reference": patient}), "request": {"method": "POST", "url": "Observation"}},
    ]}
    r = api("POST", "/fhir", bundle)
    assert r.status_code == 422, r.text
    assert "Observation.device" in r.json()["issue"][0]["expression"]
    assert _count(engine, "Observation") == 0 and _count(engine, "Patient") == 0


# -- read: what a search returns besides its matches -----------------------------------------------

def test_an_include_of_a_planted_reference_returns_only_readable_types(api, engine):
    pid = _patient(api)
    _plant(engine, "Observation", "old-1", _observation(device={"reference": f"Patient/{pid}"}))
    url = "/fhir/Observation?_id=old-1&_include=Observation:device"

    attacker = api.token("attacker", ATTACKER)
    r = api("GET", url, token=attacker)
    assert r.status_code == 200, r.text
    assert _types(r.json()) == [("Observation", "match")]
    assert "Victim" not in r.text  # the name of the Patient; its reference is in the Observation itself

    reader = api.token("reader", [*ATTACKER, "system/Patient.read"])
    r = api("GET", url, token=reader)
    assert _types(r.json()) == [("Observation", "match"), ("Patient", "include")]
    assert r.json()["entry"][1]["resource"]["id"] == pid


def test_an_include_of_a_type_r4_allows_but_the_token_cannot_read(api, engine):
    """ImagingStudy.subject may be a Device in R4: the write is right, the read must still check."""
    r = api("POST", "/fhir/Device", {"resourceType": "Device", "status": "active"})
    device = r.json()["id"]
    r = api("POST", "/fhir/ImagingStudy", {"resourceType": "ImagingStudy", "status": "available",
                                           "subject": {"reference": f"Device/{device}"}})
    assert r.status_code == 201, r.text
    study = r.json()["id"]
    url = f"/fhir/ImagingStudy?_id={study}&_include=ImagingStudy:subject"

    no_devices = api.token("no-devices", ["system/ImagingStudy.read", "system/Patient.read"])
    r = api("GET", url, token=no_devices)
    assert r.status_code == 200 and _types(r.json()) == [("ImagingStudy", "match")]

    devices = api.token("devices", ["system/ImagingStudy.read", "system/Patient.read", "system/Device.read"])
    assert _types(api("GET", url, token=devices).json()) == [("ImagingStudy", "match"), ("Device", "include")]


def test_a_revinclude_returns_only_readable_types(api, engine):
    _plant(engine, "Device", "dev-1", {"resourceType": "Device", "status": "active"})
    _plant(engine, "Observation", "old-1", _observation(device={"reference": "Device/dev-1"}))
    _plant(engine, "AuditEvent", "ae-1", {"resourceType": "AuditEvent", "type": {"code": "rest"},
                                          "recorded": "2024-01-01T00:00:00Z", "agent": [{"requestor": True}],
                                          "source": {"observer": {"display": "x"}},
                                          "entity": [{"what": {"reference": "Observation/old-1"}}]})
    pairs = [("_id", "old-1"), ("_revinclude", "AuditEvent:entity")]
    with reading(engine) as s:
        # Each returned resource is checked by its own type: AuditEvent is not readable here.
        found = search.bundle(s, "Observation", pairs, "http://x", can_read=lambda t: t != "AuditEvent")
        assert _types(found) == [("Observation", "match")]
        found = search.bundle(s, "Observation", pairs, "http://x", can_read=lambda t: True)
        assert _types(found) == [("Observation", "match"), ("AuditEvent", "include")]
        # A caller that has no client to ask gets the matches only.
        assert _types(search.bundle(s, "Observation", pairs, "http://x")) == [("Observation", "match")]

    # Over the API: a revinclude of a readable type still comes back; a wildcard does not open the audit trail.
    url = "/fhir/Device?_id=dev-1&_revinclude=Observation:device"
    r = api("GET", url, token=api.token("reader", ATTACKER))
    assert _types(r.json()) == [("Device", "match"), ("Observation", "include")]
    wildcard = api.token("wildcard", ["system/*.read"])
    assert api("GET", "/fhir/Observation?_id=old-1&_revinclude=AuditEvent:entity", token=wildcard).status_code == 403


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_a_search_entry_of_a_bundle_returns_only_readable_types(api, engine, kind):
    pid = _patient(api)
    _plant(engine, "Observation", "old-1", _observation(device={"reference": f"Patient/{pid}"}))
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [
        {"request": {"method": "GET", "url": "Observation?_id=old-1&_include=Observation:device"}}]}

    r = api("POST", "/fhir", bundle, token=api.token("attacker", ATTACKER))
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"]["status"].startswith("200")
    assert _types(entry["resource"]) == [("Observation", "match")]
    assert "Victim" not in r.text  # the name of the Patient; its reference is in the Observation itself

    r = api("POST", "/fhir", bundle, token=api.token("reader", [*ATTACKER, "system/Patient.read"]))
    assert _types(r.json()["entry"][0]["resource"]) == [("Observation", "match"), ("Patient", "include")]


# -- one key, once ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "body", "key"), [
    ("/fhir/Patient", b'{"resourceType":"Observation","resourceType":"Patient","name":[{"family":"Dup"}],'
                      b'"gender":"male"}', "resourceType"),
    ("/fhir/Observation", b'{"resourceType":"Observation","status":"final","code":{"text":"a","text":"b"}}',
     "text"),
    ("/fhir/Observation", b'{"resourceType":"Observation","status":"final","code":{"text":"a"},'
                          b'"device":{"reference":"Device/d"},"device":{"reference":"Patient/p"}}', "device"),
    ("/fhir", b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},'
              b'"resource":{"resourceType":"Patient","gender":"male","gender":"female","name":[{"family":"D"}]}}]}',
     "gender"),
])
def test_a_body_holding_a_key_twice_is_400_and_stores_nothing(api, engine, url, body, key):
    r = api("POST", url, body)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and repr(key) in outcome["issue"][0]["diagnostics"]
    assert _count(engine, "Patient") == 0 and _count(engine, "Observation") == 0
