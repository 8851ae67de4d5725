"""AuditEvent searched by the one FHIR search engine (sort, paging, agent, patient, type ...), on
SQLite and PostgreSQL; and a page of DiagnosticReports served with their delivery status in a
number of queries that does not grow with the page.

Every FHIR body received is checked by the independent R4 validator, as in test_fhir_api.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from sqlalchemy import event
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.fhir.search_params import PARAMS
from cxr_fhir.records.tables import AuditEvent, FhirIndex, FhirResource
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import reading, writing
from cxr_fhir.storage.fhir import projection, search
from cxr_fhir.storage.image_store import ImageStore
from support.fhir_validator import validate
from support.reports import make_report

FHIR = "application/fhir+json"
CLIENT_SYSTEM = "urn:cxr-fhir:client"


class Api:
    def __init__(self, client: TestClient, seen: list[dict]):
        self.client, self.seen = client, seen

    def __call__(self, method: str, url: str, token: str, body=None) -> object:
        headers = {"Authorization": f"Bearer {token}", "Accept": FHIR}
        kw = {}
        if body is not None:
            headers["Content-Type"] = FHIR
            kw["content"] = json.dumps(body)
        r = self.client.request(method, url, headers=headers, **kw)
        if r.content and r.headers.get("content-type", "").startswith(FHIR):
            self.seen.append(r.json())
        return r


@pytest.fixture(scope="module")
def seen() -> Iterator[list[dict]]:
    bodies: list[dict] = []
    yield bodies
    sample = bodies[:150]
    bad = [(b.get("resourceType"), r["issues"]) for b, r in zip(sample, validate(sample), strict=True) if r["issues"]]
    assert not bad, bad[:5]


@pytest.fixture
def api(tmp_path, db_url, engine, seen) -> Iterator[Api]:
    settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False, _env_file=None)
    with TestClient(create_app(settings)) as client:
        yield Api(client, seen)


def _token(engine, name: str, scopes: list[str]) -> str:
    with writing(engine) as s:
        return create_client(s, name, scopes, actor="test")[1]


def _patient(family: str) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}], "gender": "female"}


def _events(api: Api, token: str, query: str) -> dict:
    r = api("GET", f"/fhir/AuditEvent?{query}", token)
    assert r.status_code == 200, (query, r.text[:500])
    return r.json()


def _resources(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", [])]


def test_audit_events_are_searched_like_every_other_type(api, engine):
    admin = _token(engine, "integration", ["system/*.*"])
    ward = _token(engine, "ward-client", ["system/Patient.read", "system/Observation.read"])
    auditor = _token(engine, "auditor", ["system/AuditEvent.read"])
    p1 = api("POST", "/fhir/Patient", admin, _patient("Auditone")).json()["id"]
    p2 = api("POST", "/fhir/Patient", admin, _patient("Audittwo")).json()["id"]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{p1}"}}
    oid = api("POST", "/fhir/Observation", admin, obs).json()["id"]
    assert api("GET", f"/fhir/Patient/{p1}", ward).status_code == 200
    assert api("GET", f"/fhir/Observation/{oid}", ward).status_code == 200
    assert api("GET", f"/fhir/Patient/{p2}", admin).status_code == 200
    assert api("GET", "/fhir/Patient/not-there", ward).status_code == 404

    # A read of a Patient by a client is found by who did it and by whom it was about.
    both = _events(api, auditor, f"agent=ward-client&patient=Patient/{p1}")
    assert both["total"] == 2
    kinds = sorted((e["subtype"][0]["code"], e["entity"][0]["what"]["reference"]) for e in _resources(both))
    assert kinds == [("read", f"Observation/{oid}"), ("read", f"Patient/{p1}")]
    event_ = next(e for e in _resources(both) if e["entity"][0]["what"]["reference"] == f"Patient/{p1}")
    assert event_["agent"][0]["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": "ward-client"}
    assert event_["agent"][0]["who"]["display"] == "client:ward-client"
    assert _events(api, auditor, f"agent={CLIENT_SYSTEM}|ward-client&patient={p1}")["total"] == 2

    # agent: every event of that client, and only its.
    ward_events = _resources(_events(api, auditor, "agent=ward-client&_count=100"))
    assert len(ward_events) == 3
    assert {e["agent"][0]["who"]["identifier"]["value"] for e in ward_events} == {"ward-client"}
    assert _events(api, auditor, "agent=nobody-at-all")["total"] == 0

    # patient: who opened that patient, directly or through a resource of theirs; not the other one.
    about_p1 = _resources(_events(api, auditor, f"patient=Patient/{p1}&_count=100"))
    assert {(e["agent"][0]["who"]["identifier"]["value"], e["subtype"][0]["code"]) for e in about_p1} == {
        ("ward-client", "read")}
    about_p2 = _resources(_events(api, auditor, f"patient={p2}"))
    assert [(e["agent"][0]["who"]["identifier"]["value"], e["entity"][0]["what"]["reference"])
            for e in about_p2] == [("integration", f"Patient/{p2}")]
    # The patient of a resource acted on is an entity of the event too (role 1, Patient).
    [on_obs] = _resources(_events(api, auditor, f"entity=Observation/{oid}"))
    assert on_obs["entity"][1]["what"] == {"reference": f"Patient/{p1}"} and on_obs["entity"][1]["role"]["code"] == "1"
    assert _events(api, auditor, f"entity=Patient/{p1}")["total"] == 2

    # type, subtype, action, outcome, _id
    creates = _resources(_events(api, auditor, "action=C&agent=integration&_count=100"))
    assert len(creates) == 3 and {e["subtype"][0]["code"] for e in creates} == {"create"}
    assert _events(api, auditor, "type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest&action=C"
                   "&agent=integration")["total"] == 3
    assert _events(api, auditor, "type=110114")["total"] == 0  # no logins here
    assert _events(api, auditor, "subtype=http://hl7.org/fhir/restful-interaction|read&agent=ward-client"
                   )["total"] == 3
    failed = _resources(_events(api, auditor, "outcome=4"))
    assert [(e["agent"][0]["who"]["identifier"]["value"], e["entity"][0]["what"]["reference"]) for e in failed] == [
        ("ward-client", "Patient/not-there")]
    assert _events(api, auditor, "outcome=0,4&action=R&subtype=read")["total"] == 4
    one = failed[0]["id"]
    assert [e["id"] for e in _resources(_events(api, auditor, f"_id={one}"))] == [one]
    read = api("GET", f"/fhir/AuditEvent/{one}", auditor)
    assert read.status_code == 200 and read.json()["outcome"] == "4" and read.headers["etag"] == 'W/"1"'

    # _sort by date, both ways; paging with _count / _offset.
    newest_first = [e["recorded"] for e in _resources(_events(api, auditor, "_sort=-date&_count=200"))]
    oldest_first = [e["recorded"] for e in _resources(_events(api, auditor, "_sort=date&_count=200"))]
    assert len(newest_first) >= 10
    assert newest_first == sorted(newest_first, reverse=True) and oldest_first == sorted(oldest_first)
    assert sorted(newest_first) == sorted(oldest_first[:len(newest_first)])
    page = _events(api, auditor, "_sort=date&_count=3&_offset=3")
    assert [e["recorded"] for e in _resources(page)] == oldest_first[3:6]
    assert {link["relation"] for link in page["link"]} == {"self", "next", "previous"}
    assert _events(api, auditor, "date=ge2000-01-01&date=lt2999-01-01&_summary=count")["total"] >= 10
    assert _events(api, auditor, "date=lt2000-01-01")["total"] == 0

    # Still an auditor's trail only; still read-only; reading another type through it needs its scope.
    assert api("GET", "/fhir/AuditEvent?agent=ward-client", admin).status_code == 403
    assert api("GET", f"/fhir/AuditEvent?_include=AuditEvent:entity&patient={p1}", auditor).status_code == 403
    assert api("GET", "/fhir/AuditEvent?patient.family=auditone", auditor).status_code == 403
    assert api("GET", f"/fhir/Patient?_id={p1}&_revinclude=AuditEvent:patient", admin).status_code == 403
    assert api("DELETE", f"/fhir/AuditEvent/{one}", _token(engine, "w", ["system/AuditEvent.*"])).status_code == 405
    full = _token(engine, "full-auditor", ["system/*.read", "system/AuditEvent.read"])
    included = _resources(_events(api, full, f"patient=Patient/{p1}&agent=ward-client&_include=AuditEvent:entity"))
    assert sorted(r["resourceType"] for r in included) == ["AuditEvent", "AuditEvent", "Observation", "Patient"]
    assert api("GET", "/fhir/AuditEvent?_sort=agent", auditor).status_code == 400  # a token is not sortable

    cs = api.client.get("/fhir/metadata").json()
    audit = next(r for r in cs["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert {p["name"] for p in audit["searchParam"]} == {"_id", "_lastUpdated", *PARAMS["AuditEvent"]}
    assert {"date", "agent", "patient", "entity", "type", "subtype", "action", "outcome"} <= set(PARAMS["AuditEvent"])
    assert {i["code"] for i in audit["interaction"]} == {"read", "vread", "search-type", "history-instance",
                                                         "history-type"}


def test_audit_rows_without_a_fhir_event_are_backfilled(engine):
    with writing(engine) as s:  # as recorded before the audit trail was in the FHIR store
        s.add(AuditEvent(action="R", subtype="read", agent_type="user", agent_id="dr.old", entity_type="Patient",
                         entity_id="p-old"))
        s.add(AuditEvent(action="E", subtype="login", agent_type="user", agent_id="dr.old", outcome="4"))
    with writing(engine) as s:
        assert projection.backfill_audit_events(s, batch=1) == 2
    with writing(engine) as s:
        assert projection.backfill_audit_events(s) == 0
    with reading(engine) as s:
        found = search.bundle(s, "AuditEvent", [("patient", "Patient/p-old"), ("agent", "dr.old")], "http://x")
        assert found["total"] == 1
        assert search.bundle(s, "AuditEvent", [("agent", "urn:cxr-fhir:user|dr.old")], "http://x")["total"] == 2


def test_the_index_of_an_audit_event_stays_small(engine):
    """One is written per request: only the parameters an auditor searches by are indexed."""
    from cxr_fhir.security.audit import record

    with writing(engine) as s:
        row = record(s, action="R", subtype="read", agent_type="client", agent_id="c", entity_type="Patient",
                     entity_id="p-9", source_ip="10.0.0.1", query="a=b")
    with Session(engine) as s:
        params = sorted(s.exec(select(FhirIndex.param).where(FhirIndex.resource_type == "AuditEvent",
                                                             FhirIndex.resource_id == row.id)).all())
        assert params == ["action", "agent", "date", "entity", "outcome", "patient", "subtype", "type"]
        assert s.get(FhirResource, ("AuditEvent", row.id)).origin == "domain"


def test_a_page_of_reports_costs_the_same_queries_whatever_its_size(engine, tmp_path):
    """The delivery status of every DiagnosticReport on a page comes from one outbox query."""
    images = ImageStore(tmp_path / "images")
    made = [make_report(engine, images) for _ in range(6)]
    statements: list[str] = []

    def count(conn, cursor, statement, *rest) -> None:
        statements.append(statement)

    counts = {}
    for n in (3, 6):
        with reading(engine) as s:
            statements.clear()
            event.listen(engine, "before_cursor_execute", count)
            try:
                bundle = search.bundle(s, "DiagnosticReport", [("_count", str(n))], "http://x")
            finally:
                event.remove(engine, "before_cursor_execute", count)
            counts[n] = len(statements)
        served = _resources(bundle)
        assert len(served) == n and {r["id"] for r in served} <= {m.report_id for m in made}
        assert all({"url": "urn:cxr-fhir:ehr-delivery-status", "valueCode": "pending"} in r["extension"]
                   for r in served)
    assert counts[3] == counts[6], counts
    # The single read still carries it.
    from cxr_fhir.storage.fhir.delivery import with_delivery_status
    with reading(engine) as s:
        one = with_delivery_status(s, s.get(FhirResource, ("DiagnosticReport", made[0].report_id)).content)
    assert {"url": "urn:cxr-fhir:ehr-delivery-status", "valueCode": "pending"} in one["extension"]
