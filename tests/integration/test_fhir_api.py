"""The /fhir REST API in process (Litestar TestClient), on SQLite and PostgreSQL, without the models.

Every JSON body the API returns here is collected and checked by the independent R4 validator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from litestar.testing import TestClient
from sqlmodel import Session, func, select

from cxr_fhir.app import create_app
from cxr_fhir.fhir.search_params import PARAMS
from cxr_fhir.records.tables import AuditEvent, FhirResource, Patient
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import writing
from support.fhir_validator import validate

FHIR = "application/fhir+json"
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"


class Api:
    """A client that remembers every FHIR body it received, for the validator."""

    def __init__(self, client: TestClient, token: str, seen: list[dict]):
        self.client, self.token, self.seen = client, token, seen

    def __call__(self, method: str, url: str, body=None, headers=None, token: str | None = None, **kw):
        h = {"Authorization": f"Bearer {token or self.token}", "Accept": FHIR}
        if body is not None:
            h["Content-Type"] = FHIR
            kw["content"] = json.dumps(body) if not isinstance(body, bytes) else body
        h.update(headers or {})
        r = self.client.request(method, url, headers=h, **kw)
        if r.content and r.headers.get("content-type", "").startswith(FHIR):
            self.seen.append(r.json())
        return r


@pytest.fixture
def settings_db(tmp_path, db_url) -> Settings:
    return Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False, _env_file=None)


@pytest.fixture
def app_client(settings_db, engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings_db)) as client:
        yield client


@pytest.fixture(scope="module")
def seen() -> Iterator[list[dict]]:
    bodies: list[dict] = []
    yield bodies
    # One validator run over everything the module's tests received (sample: first 60 of each type).
    by_type: dict[str, list[dict]] = {}
    for body in bodies:
        by_type.setdefault(body.get("resourceType"), []).append(body)
    sample = [b for group in by_type.values() for b in group[:60]]
    results = validate(sample)
    bad = [(b.get("resourceType"), r["issues"]) for b, r in zip(sample, results, strict=True) if r["issues"]]
    assert not bad, bad[:5]


def _token(engine, name: str, scopes: list[str]) -> str:
    with writing(engine) as s:
        return create_client(s, name, scopes, actor="test")[1]


@pytest.fixture
def api(app_client, engine, seen) -> Api:
    return Api(app_client, _token(engine, "integration", ["system/*.*"]), seen)


def _patient(family: str, mrn: str | None = None, **extra) -> dict:
    body = {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female", **extra}
    if mrn:
        body["identifier"] = [{"system": MRN, "value": mrn}]
    return body


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_metadata_is_public_and_lists_exactly_what_is_served(api, app_client):
    r = app_client.get("/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    cs = r.json()
    api.seen.append(cs)
    assert cs["fhirVersion"] == "4.0.1" and "application/fhir+json" in cs["format"]
    resources = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert set(resources) == {*PARAMS, "AuditEvent", "Binary", "OperationDefinition"}
    for rtype, params in PARAMS.items():
        assert {p["name"] for p in resources[rtype]["searchParam"]} == {"_id", "_lastUpdated", *params}
    assert resources["ImagingStudy"]["operation"][0]["name"] == "analyze"
    assert {i["code"] for i in resources["Provenance"]["interaction"]} == {
        "read", "vread", "search-type", "history-instance", "history-type"}
    assert "Observation:part-of" in resources["ImagingStudy"]["searchRevInclude"]
    assert "DiagnosticReport:imaging-study" in resources["ImagingStudy"]["searchRevInclude"]


def test_create_read_update_version_history_delete(api):
    r = api("POST", "/fhir/Patient", _patient("Lovelace", "MRN-1", telecom=[{"system": "phone", "value": "555"}]))
    assert r.status_code == 201 and r.headers["etag"] == 'W/"1"'
    pid = r.json()["id"]
    assert r.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1") and r.headers["last-modified"]
    read = api("GET", f"/fhir/Patient/{pid}")
    assert read.status_code == 200 and read.json()["telecom"] == [{"system": "phone", "value": "555"}]

    changed = {**read.json(), "name": [{"family": "Lovelace", "given": ["Ada"]}]}
    r = api("PUT", f"/fhir/Patient/{pid}", changed, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    stale = api("PUT", f"/fhir/Patient/{pid}", changed, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    assert api("GET", f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"  # the stale write changed nothing

    v1 = api("GET", f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json()["name"][0]["given"] == ["Ann"]
    assert api("GET", f"/fhir/Patient/{pid}/_history/9").status_code == 404

    assert api("DELETE", f"/fhir/Patient/{pid}").status_code == 200
    gone = api("GET", f"/fhir/Patient/{pid}")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    hist = api("GET", f"/fhir/Patient/{pid}/_history").json()
    assert hist["type"] == "history" and [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "PUT", "POST"]
    assert "resource" not in hist["entry"][0]
    assert api("GET", "/fhir/Patient/does-not-exist").status_code == 404
    type_hist = api("GET", "/fhir/Patient/_history?_count=2").json()
    assert type_hist["total"] == 3 and len(type_hist["entry"]) == 2
    assert any(link["relation"] == "next" for link in type_hist["link"])


def test_patient_rows_follow_the_api_and_keep_their_rules(api, engine):
    pid = api("POST", "/fhir/Patient", _patient("Curie", "MRN-2", birthDate="1967-11-07")).json()["id"]
    with Session(engine) as s:
        row = s.get(Patient, pid)
        assert (row.mrn, row.mrn_system, row.family, row.given, str(row.birth_date)) == (
            "MRN-2", MRN, "Curie", "Ann", "1967-11-07")
    dup = api("POST", "/fhir/Patient", _patient("Other", "MRN-2"))
    assert dup.status_code == 409 and dup.json()["issue"][0]["expression"] == ["Patient.identifier"]
    nameless = api("POST", "/fhir/Patient", {"resourceType": "Patient", "gender": "male"})
    assert nameless.status_code == 422
    unknown = api("POST", "/fhir/Patient", {**_patient("X"), "notAnElement": True})
    assert unknown.status_code == 400 and "notAnElement" in json.dumps(unknown.json())
    wrong = api("POST", "/fhir/Patient", {"resourceType": "Observation"})
    assert wrong.status_code == 400
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Patient)).one() == 1


def test_conditional_create_and_update(api):
    first = api("POST", "/fhir/Patient", _patient("Noether", "MRN-3"),
                headers={"If-None-Exist": f"identifier={MRN}|MRN-3"})
    again = api("POST", "/fhir/Patient", _patient("Noether", "MRN-3"),
                headers={"If-None-Exist": f"identifier={MRN}|MRN-3"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]

    created = api("PUT", f"/fhir/Patient?identifier={MRN}|MRN-4", _patient("Hopper", "MRN-4"))
    updated = api("PUT", f"/fhir/Patient?identifier={MRN}|MRN-4", _patient("Hopper", "MRN-4", gender="other"))
    assert (created.status_code, updated.status_code) == (201, 200)
    assert updated.json()["id"] == created.json()["id"] and updated.json()["gender"] == "other"

    api("POST", "/fhir/Patient", _patient("Twin", "MRN-5"))
    api("POST", "/fhir/Patient", _patient("Twin", "MRN-6"))
    many = api("POST", "/fhir/Patient", _patient("Twin"), headers={"If-None-Exist": "family=Twin"})
    assert many.status_code == 412


def test_search_semantics(api):
    for family, given, birth, mrn in [("Müller", "Jörg", "1950-03-04", "A1"), ("Mullis", "Kary", "1944-12-28", "A2"),
                                      ("Smith", "Ann", "1990-06-15", "A3"), ("O'Brien", "Pat", "1990-01-01", "A4")]:
        api("POST", "/fhir/Patient", {**_patient(family, mrn, birthDate=birth), "name": [{"family": family,
                                                                                         "given": [given]}]})

    def ids(query: str) -> set[str]:
        r = api("GET", f"/fhir/Patient?{query}")
        assert r.status_code == 200, r.text
        return {e["resource"]["name"][0]["family"] for e in r.json().get("entry", [])}

    assert ids("name=mul") == {"Müller", "Mullis"}  # starts-with, case- and accent-insensitive
    assert ids("family:exact=Müller") == {"Müller"} and ids("family:exact=müller") == set()
    assert ids("name:contains=lli") == {"Mullis"}
    assert ids(f"identifier={MRN}|A3") == {"Smith"} and ids("identifier=|A3") == set()
    assert ids("identifier=A3,A4") == {"Smith", "O'Brien"}
    assert ids("birthdate=1990") == {"Smith", "O'Brien"}
    assert ids("birthdate=ge1950-01-01&birthdate=lt1990-06") == {"Müller", "O'Brien"}
    assert ids("birthdate=gt1990-01-01") == {"Smith"} and ids("birthdate=le1944-12-28") == {"Mullis"}
    assert ids("gender=female&family=smith") == {"Smith"} and ids("gender:not=female") == set()
    assert ids("name=' OR 1=1 --") == set() and ids("name=%25") == set() and ids("family=O'Brien") == {"O'Brien"}
    assert ids("_lastUpdated=gt2000-01-01") == {"Müller", "Mullis", "Smith", "O'Brien"}

    ordered = api("GET", "/fhir/Patient?_sort=-birthdate").json()
    assert [e["resource"]["birthDate"] for e in ordered["entry"]] == ["1990-06-15", "1990-01-01", "1950-03-04",
                                                                     "1944-12-28"]
    assert api("GET", "/fhir/Patient?_summary=count").json() == {
        "resourceType": "Bundle", "type": "searchset", "total": 4,
        "link": [{"relation": "self", "url": "http://testserver.local/fhir/Patient?_summary=count"}]}
    subset = api("GET", "/fhir/Patient?_elements=gender&family=smith").json()["entry"][0]["resource"]
    assert set(subset) == {"resourceType", "id", "meta", "gender"} and subset["meta"]["tag"][0]["code"] == "SUBSETTED"
    for bad in ("birthdate=yesterday", "_sort=gender", "_summary=text", "_count=-1", "name:fuzzy=x",
                "_include=Patient:nothing"):
        r = api("GET", f"/fhir/Patient?{bad}")
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", bad
    # Unknown parameters: ignored and left out of the self link (lenient, as HAPI), or refused when strict.
    lenient = api("GET", "/fhir/Patient?colour=red&family=smith").json()
    assert lenient["total"] == 1 and lenient["link"][0]["url"].endswith("/fhir/Patient?family=smith")
    strict = api("GET", "/fhir/Patient?colour=red", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "colour" in strict.json()["issue"][0]["diagnostics"]


def test_paging_walks_every_match_once(api):
    for i in range(7):
        api("POST", "/fhir/Patient", _patient(f"Page{i}", f"P{i}"))
    seen_ids, url, pages = [], "/fhir/Patient?family=page&_count=3&_sort=family", 0
    while url:
        bundle = api("GET", url).json()
        pages += 1
        assert bundle["total"] == 7
        seen_ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if pages > 1:
            assert "previous" in links
        url = _path(links["next"]) if "next" in links else None
    assert pages == 3 and len(seen_ids) == len(set(seen_ids)) == 7


def test_transaction_resolves_urn_uuid_and_chained_search_includes(api):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0e8b2a0c-1111-4000-8000-000000000001",
         "resource": _patient("Txpatient"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "subject": {"reference": "urn:uuid:0e8b2a0c-1111-4000-8000-000000000001"},
                      "effectiveDateTime": "2026-11-25T10:00:00Z",
                      "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                                        "code": "/min"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    r = api("POST", "/fhir", bundle)
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "201 Created"]
    pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    obs = api("GET", "/fhir/Observation?subject:Patient.family=txpatient&_include=Observation:subject").json()
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in obs["entry"])
    assert modes == [("include", "Patient"), ("match", "Observation")]
    assert obs["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert api("GET", f"/fhir/Observation?patient={pid}&code=http://loinc.org|8867-4").json()["total"] == 1
    assert api("GET", "/fhir/Observation?date=ge2026-11-25&date=lt2026-11-26").json()["total"] == 1
    # _revinclude from the patient side
    rev = api("GET", f"/fhir/Patient?_id={pid}&_revinclude=Observation:subject").json()
    assert {e["resource"]["resourceType"] for e in rev["entry"]} == {"Patient", "Observation"}


def test_transaction_is_all_or_nothing_and_batch_is_not(api, engine):
    stored = select(func.count()).select_from(FhirResource).where(FhirResource.resource_type != "AuditEvent")
    with Session(engine) as s:  # the audit trail grows with every request, refused ones too
        before = s.exec(stored).one()
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _patient("Kept"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "bogus": 1}, "request": {"method": "POST", "url": "Patient"}}]}
    r = api("POST", "/fhir", bad)
    assert r.status_code == 400 and "nothing was stored" in r.json()["issue"][0]["diagnostics"]
    with Session(engine) as s:
        assert s.exec(stored).one() == before
    batch = {**bad, "type": "batch"}
    r = api("POST", "/fhir", batch)
    assert r.status_code == 200 and r.json()["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "400"]
    assert r.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    huge = {"resourceType": "Bundle", "type": "batch",
            "entry": [{"request": {"method": "GET", "url": "Patient"}}] * 501}
    assert api("POST", "/fhir", huge).status_code == 413
    assert api("POST", "/fhir", {"resourceType": "Bundle", "type": "collection"}).status_code == 400


def test_tokens_scopes_and_audit(api, engine):
    assert api.client.get("/fhir/Patient").status_code == 401
    r = api.client.get("/fhir/Patient", headers={"Authorization": "Bearer cxr_not-a-token"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    reader = _token(engine, "reader", ["system/Patient.read"])
    assert api("GET", "/fhir/Patient", token=reader).status_code == 200
    denied = api("POST", "/fhir/Patient", _patient("Nope"), token=reader)
    assert denied.status_code == 403 and denied.json()["issue"][0]["code"] == "forbidden"
    assert api("GET", "/fhir/Observation", token=reader).status_code == 403
    assert api("GET", "/fhir/AuditEvent", token=reader).status_code == 403
    # Another type is never read through a search of a readable one: chains and includes need its scope.
    obs_reader = _token(engine, "obs-reader", ["system/Observation.read"])
    for query in ("subject:Patient.family=smith", "_include=Observation:subject", "patient.family=smith"):
        r = api("GET", f"/fhir/Observation?{query}", token=obs_reader)
        assert r.status_code == 403 and "Patient.read" in r.text, query
    assert api("GET", "/fhir/Patient?_revinclude=Observation:subject", token=reader).status_code == 403
    for malformed in ("_include=", "_include=Observation", "_revinclude=", "_include=::"):  # found by hypothesis
        assert api("GET", f"/fhir/Observation?{malformed}", token=obs_reader).status_code == 400, malformed
    assert api("GET", "/fhir/Observation?code=x", token=obs_reader).status_code == 200
    obs_writer = _token(engine, "obs-writer", ["system/Observation.*"])
    probe = api("POST", "/fhir/Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                headers={"If-None-Exist": "subject:Patient.family=smith"}, token=obs_writer)
    assert probe.status_code == 403
    tx = {"resourceType": "Bundle", "type": "transaction",
          "entry": [{"resource": _patient("Sneaky"), "request": {"method": "POST", "url": "Patient"}}]}
    assert api("POST", "/fhir", tx, token=reader).status_code == 403

    assert api("GET", "/fhir/AuditEvent").status_code == 403  # system/*.* does not open the audit trail
    auditor = _token(engine, "auditor", ["system/AuditEvent.read"])
    events = api("GET", "/fhir/AuditEvent?action=C,E&_count=50", token=auditor).json()
    subtypes = {e["resource"]["subtype"][0]["code"] for e in events["entry"]}
    assert {"create", "search-type"} <= subtypes
    with Session(engine) as s:
        failed = s.exec(select(AuditEvent).where(AuditEvent.outcome == "4")).all()
        assert {e.subtype for e in failed} >= {"create", "search-type", "transaction"}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": _patient("Batched"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient?family=batched"}}]}
    assert api("POST", "/fhir", batch).status_code == 200
    with Session(engine) as s:  # each entry is audited on its own
        per_entry = s.exec(select(AuditEvent).where(AuditEvent.entity_type == "Patient",
                                                    AuditEvent.agent_id == "integration")).all()
        assert {"create", "search-type"} <= {e.subtype for e in per_entry}
    r = api("GET", "/fhir/Patient")
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert api("POST", "/fhir/AuditEvent", {"resourceType": "AuditEvent"}).status_code == 403
    everything = _token(engine, "audit-writer", ["system/AuditEvent.*"])
    # Never editable, whatever the scope: a read-only type (as Provenance) has no write interaction: 405.
    sample = events["entry"][0]["resource"]
    eid, written = sample["id"], {k: v for k, v in sample.items() if k not in ("id", "meta")}
    assert api("POST", "/fhir/AuditEvent", {"resourceType": "AuditEvent"}, token=everything).status_code == 400
    assert api("POST", "/fhir/AuditEvent", written, token=everything).status_code == 405
    assert api("PUT", f"/fhir/AuditEvent/{eid}", {**written, "id": eid}, token=everything).status_code == 405
    assert api("DELETE", f"/fhir/AuditEvent/{eid}", token=everything).status_code == 405
    assert api("PUT", "/fhir/AuditEvent/new-one", {**written, "id": "new-one"}, token=everything).status_code == 405
    kept = api("GET", f"/fhir/AuditEvent/{eid}", token=everything)
    assert kept.status_code == 200 and kept.json()["meta"]["versionId"] == "1"
    with Session(engine) as s:
        assert s.get(FhirResource, ("AuditEvent", "new-one")) is None


def test_negotiation_and_errors_are_operation_outcomes(api):
    assert api("GET", "/fhir/Patient", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert api("GET", "/fhir/Patient?_format=xml").status_code == 406
    assert api("GET", "/fhir/Patient", headers={"Accept": "application/json"}).headers["content-type"].startswith(
        "application/json")
    r = api("POST", "/fhir/Patient", b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415
    r = api("POST", "/fhir/Patient", b"{not json")
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = api("GET", "/fhir/Spaceship/1")
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-supported"
    r = api("PATCH", "/fhir/Patient/1", {"op": "x"})
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
    pid = api("POST", "/fhir/Patient", _patient("Idcheck")).json()["id"]
    r = api("PUT", f"/fhir/Patient/{pid}", {**_patient("Idcheck"), "id": "other"})
    assert r.status_code == 400
    minimal = api("POST", "/fhir/Patient", _patient("Quiet"), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    oo = api("POST", "/fhir/Patient", _patient("Loud"), headers={"Prefer": "return=OperationOutcome"})
    assert oo.json()["resourceType"] == "OperationOutcome"
    assert api("GET", "/fhir/Binary/" + "0" * 64).status_code == 404
    assert api("GET", "/fhir/OperationDefinition/ImagingStudy-analyze").json()["code"] == "analyze"


def test_review_findings_stay_fixed(api, engine, tmp_path):
    """Defects an independent review found, each reproduced here first."""
    pid = api("POST", "/fhir/Patient", _patient("Scoped", "R-1")).json()["id"]
    obs_only = _token(engine, "obs-only", ["system/Observation.*"])
    # 1. A leading '/' in a Bundle entry's url did not escape the scope check.
    for kind, method, url in (("batch", "GET", f"/Patient/{pid}"), ("batch", "GET", "/Patient?family=scoped"),
                              ("transaction", "DELETE", f"/Patient/{pid}"), ("transaction", "POST", "/Patient")):
        entry = {"request": {"method": method, "url": url}}
        if method == "POST":
            entry["resource"] = _patient("Sneak")
        r = api("POST", "/fhir", {"resourceType": "Bundle", "type": kind, "entry": [entry]}, token=obs_only)
        assert r.status_code == 403, (method, url, r.text)
    assert api("GET", f"/fhir/Patient/{pid}").status_code == 200

    # 3. A deleted analysed study could be recreated by PUT, and deleting it again was a 500.
    from cxr_fhir.storage.image_store import ImageStore
    from support.reports import make_report

    made = make_report(engine, ImageStore(tmp_path / "img"), queue=False)
    study = api("GET", f"/fhir/ImagingStudy/{made.study_id}").json()
    assert api("DELETE", f"/fhir/ImagingStudy/{made.study_id}").status_code == 200
    assert api("PUT", f"/fhir/ImagingStudy/{made.study_id}", study).status_code == 410
    assert api("PUT", f"/fhir/Media/{made.study_id}", {"resourceType": "Media", "id": made.study_id,
                                                       "status": "completed", "content": {}}).status_code == 410
    assert api("DELETE", f"/fhir/ImagingStudy/{made.study_id}").status_code == 200

    # 4. A urn:uuid resolved to a patient the same transaction deletes.
    doomed = api("POST", "/fhir/Patient", _patient("Doomed", "R-555")).json()["id"]
    urn = "urn:uuid:7d9f2b7e-0000-4000-8000-000000000555"
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
        {"fullUrl": urn, "resource": _patient("Reborn", "R-555"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|R-555"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": urn}}, "request": {"method": "POST", "url": "Observation"}}]}
    r = api("POST", "/fhir", tx)
    assert r.status_code == 200, r.text
    new_pid = r.json()["entry"][1]["response"]["location"].split("/")[1]
    obs_id = r.json()["entry"][2]["response"]["location"].split("/")[1]
    assert new_pid != doomed
    assert api("GET", f"/fhir/Observation/{obs_id}").json()["subject"]["reference"] == f"Patient/{new_pid}"
    dangling = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    assert api("POST", "/fhir", dangling).status_code == 400

    # 5. A conditional update with a body that is not an object was a 500.
    assert api("PUT", f"/fhir/Patient?identifier={MRN}|R-1", b"[1,2]").status_code == 400


def test_if_match_is_checked_under_a_lock(api):
    """Two writers holding the same version: exactly one wins, the other gets 412."""
    import threading

    pid = api("POST", "/fhir/Patient", _patient("Racer", "R-9")).json()["id"]
    barrier, statuses = threading.Barrier(2), []

    def write(given: str) -> None:
        body = {**_patient("Racer", "R-9"), "id": pid, "name": [{"family": "Racer", "given": [given]}]}
        barrier.wait()
        statuses.append(api("PUT", f"/fhir/Patient/{pid}", body, headers={"If-Match": 'W/"1"'}).status_code)

    threads = [threading.Thread(target=write, args=(g,)) for g in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 412]
    assert api("GET", f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"
