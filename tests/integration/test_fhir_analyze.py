"""$analyze with the real models on real radiographs, and what the API then serves about the result:
the AI resources, includes/revincludes, confirming and amending the report, deleting the study.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.domain.findings import FINDINGS
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import writing
from support import us_core
from support.fhir_validator import validate
from support.images import dicom_from_png, png8

FHIR = "application/fhir+json"
SNOMED = "http://snomed.info/sct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared_data) -> Iterator[tuple[TestClient, str, list[Path]]]:
    root = tmp_path_factory.mktemp("analyze")
    settings = Settings(runtime_dir=root / "var", load_models=True, _env_file=None)
    app = create_app(settings)
    from cxr_fhir.storage import migrate

    migrate.upgrade(app.state.services.engine, settings.migrations_dir)
    with writing(app.state.services.engine) as s:
        token = create_client(s, "analyzer", ["system/*.*"], actor="test")[1]
    with TestClient(app, timeout=120) as client:
        assert app.state.services.models is not None, app.state.services.model_error
        yield client, token, sorted((shared_data / "nih" / "originals").glob("*.png"))


def _h(token: str, ctype: str = FHIR) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": ctype, "Accept": FHIR}


def _patient(client, token, mrn: str) -> str:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": mrn}],
            "name": [{"family": "Rivera", "given": ["Luz"]}], "gender": "female", "birthDate": "1958-04-02"}
    r = client.post("/fhir/Patient", content=json.dumps(body), headers=_h(token))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_analyze_raw_png_and_serve_every_ai_resource(env):
    client, token, images = env
    pid = _patient(client, token, "AN-1")
    r = client.post(f"/fhir/ImagingStudy/$analyze?subject=Patient/{pid}", content=images[0].read_bytes(),
                    headers=_h(token, "image/png"))
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "collection"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["DiagnosticReport", "Observation", "Observation", "Observation", "ImagingStudy"]
    dr, obs, study = bundle["entry"][0]["resource"], [e["resource"] for e in bundle["entry"][1:4]], kinds and \
        bundle["entry"][4]["resource"]

    # DiagnosticReport: preliminary, RAD + LOINC category, LOINC code, AI-marked, overlay linked, no Device performer
    assert dr["status"] == "preliminary" and "performer" not in dr
    assert {c["code"] for c in dr["category"][0]["coding"]} == {"RAD", "LP29684-5"}
    assert dr["code"]["coding"][0]["code"] == "36554-4" and dr["meta"]["security"][0]["code"] == "AIAST"
    assert dr["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert "Triage priority" in dr["conclusion"]
    assert us_core.problems(dr) == []
    overlay = dr["presentedForm"][0]["url"]
    png = client.get(f"/fhir/{overlay}", headers={"Authorization": f"Bearer {token}", "Accept": "image/png"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"

    # Observations: SNOMED (except pleural thickening) + local code, present/absent, probability component
    for o in obs:
        codes = {c["system"] for c in o["code"]["coding"]}
        finding = next(f for f in FINDINGS if f.display == o["code"]["text"])
        assert ("http://snomed.info/sct" in codes) == (finding.snomed is not None)
        assert "urn:cxr-fhir:finding" in codes
        assert o["valueCodeableConcept"]["coding"][0]["code"] in ("52101004", "2667000")
        prob = next(c for c in o["component"] if c["code"]["coding"][0]["code"] == "probability")
        assert 0 <= prob["valueQuantity"]["value"] <= 1
        assert o["partOf"] == [{"reference": f"ImagingStudy/{study['id']}"}] and o["device"]["reference"]

    # ImagingStudy: Study UID, modality DX, instance with SOP class
    assert study["identifier"][0]["system"] == "urn:dicom:uid" and study["status"] == "available"
    assert study["series"][0]["instance"][0]["sopClass"]["code"].startswith("urn:oid:")

    auth = {"Authorization": f"Bearer {token}", "Accept": FHIR}
    device = client.get(f"/fhir/{obs[0]['device']['reference']}", headers=auth).json()
    media = client.get(f"/fhir/Media?subject=Patient/{pid}", headers=auth).json()["entry"][0]["resource"]
    image = client.get(f"/fhir/{media['content']['url']}", headers={**auth, "Accept": "image/png"})
    assert image.content == images[0].read_bytes()
    prov = client.get(f"/fhir/Provenance?target=DiagnosticReport/{dr['id']}", headers=auth).json()
    assert prov["entry"][0]["resource"]["agent"][0]["who"]["reference"] == obs[0]["device"]["reference"]

    # Searches an integration engineer runs, with includes and revincludes
    reports = client.get(f"/fhir/DiagnosticReport?patient={pid}&_include=DiagnosticReport:result"
                         "&_include=DiagnosticReport:subject", headers=auth).json()
    assert sorted(e["resource"]["resourceType"] for e in reports["entry"]) == [
        "DiagnosticReport", "Observation", "Observation", "Observation", "Patient"]
    assert all(e["search"]["mode"] == ("match" if e["resource"]["resourceType"] == "DiagnosticReport" else "include")
               for e in reports["entry"])
    studies = client.get(f"/fhir/ImagingStudy?subject=Patient/{pid}&_revinclude=Observation:part-of"
                         "&_revinclude=DiagnosticReport:imaging-study&_include=ImagingStudy:subject",
                         headers=auth).json()
    assert sorted(e["resource"]["resourceType"] for e in studies["entry"]) == [
        "DiagnosticReport", "ImagingStudy", "Observation", "Observation", "Observation", "Patient"]
    top_code = next(c for c in obs[0]["code"]["coding"])
    by_code = client.get(f"/fhir/Observation?code={top_code['system']}|{top_code['code']}&patient={pid}",
                         headers=auth).json()
    assert by_code["total"] == 1
    present = client.get(f"/fhir/Observation?value-concept={SNOMED}|52101004&patient={pid}", headers=auth).json()
    assert present["total"] == sum(o["valueCodeableConcept"]["coding"][0]["code"] == "52101004" for o in obs)
    for query in (f"DiagnosticReport?code=http://loinc.org|36554-4&status=preliminary&subject=Patient/{pid}",
                  f"DiagnosticReport?date=ge2000-01-01&issued=ge2000-01-01&patient={pid}",
                  f"DiagnosticReport?result=Observation/{obs[0]['id']}",
                  f"ImagingStudy?modality=DX&status=available&patient={pid}",
                  f"ImagingStudy?identifier={study['identifier'][0]['value']}&started=ge2000"):
        assert client.get(f"/fhir/{query}", headers=auth).json()["total"] == 1, query

    with writing(client.app.state.services.engine) as s:
        auditor = create_client(s, "auditor", ["system/AuditEvent.read"], actor="test")[1]
    binary = client.get(f"/fhir/{overlay}", headers=auth).json()  # JSON when image bytes are not asked for
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "image/png"
    # Binary is a provider like every type: readable inside a batch too, never searchable or versioned.
    batch = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": overlay}}]}, headers=auth).json()
    assert batch["entry"][0]["resource"] == binary
    for path in ("/fhir/Binary", f"/fhir/{overlay}/_history", "/fhir/OperationDefinition"):
        r = client.get(path, headers=auth)
        assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-supported", path
    emitted = [dr, *obs, study, device, media, prov, reports, studies, bundle, binary,
               client.get(f"/fhir/ImagingStudy/{study['id']}/_history", headers=auth).json(),
               client.get("/fhir/AuditEvent?_count=5", headers={**auth, "Authorization": f"Bearer {auditor}"}).json()]
    problems = [(body["resourceType"], r["issues"])
                for body, r in zip(emitted, validate(emitted), strict=False) if r["issues"]]
    assert not problems


def test_doctor_confirms_then_amends_over_fhir_and_invalid_changes_are_refused(env):
    client, token, images = env
    pid = _patient(client, token, "AN-2")
    bundle = client.post(f"/fhir/ImagingStudy/$analyze?subject=Patient/{pid}", content=images[1].read_bytes(),
                         headers=_h(token, "image/png")).json()
    dr = bundle["entry"][0]["resource"]
    url = f"/fhir/DiagnosticReport/{dr['id']}"

    recoded = {**dr, "code": {"text": "something else"}}
    r = client.put(url, content=json.dumps(recoded), headers=_h(token))
    assert r.status_code == 422 and "code" in r.json()["issue"][0]["diagnostics"]
    r = client.put(url, content=json.dumps({**dr, "status": "amended"}), headers=_h(token))
    assert r.status_code == 422  # a preliminary report is confirmed first

    final = {**dr, "status": "final", "conclusion": "Reviewed: agree with AI."}
    r = client.put(url, content=json.dumps(final), headers={**_h(token), "If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["status"] == "final" and r.json()["meta"]["versionId"] == "2"
    assert r.json()["conclusion"] == "Reviewed: agree with AI."
    obs = client.get(f"/fhir/Observation?part-of=ImagingStudy/{bundle['entry'][4]['resource']['id']}",
                     headers=_h(token)).json()
    assert {e["resource"]["status"] for e in obs["entry"]} == {"final"}
    prov = client.get(f"/fhir/Provenance/{dr['id']}", headers=_h(token)).json()
    assert [a["type"]["coding"][0]["code"] for a in prov["agent"]] == ["author", "verifier"]

    stale = client.put(url, content=json.dumps({**r.json(), "status": "amended", "conclusion": "x"}),
                       headers={**_h(token), "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    amended = client.put(url, content=json.dumps({**r.json(), "status": "amended", "conclusion": "Small effusion."}),
                         headers=_h(token))
    assert amended.status_code == 200 and amended.json()["status"] == "amended"
    history = client.get(f"{url}/_history", headers=_h(token)).json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["amended", "final", "preliminary"]

    ro = client.put(f"/fhir/Observation/{obs['entry'][0]['resource']['id']}",
                    content=json.dumps(obs["entry"][0]["resource"]), headers=_h(token))
    assert ro.status_code == 422


def test_delete_study_cancels_report_and_hides_it(env):
    client, token, images = env
    pid = _patient(client, token, "AN-3")
    bundle = client.post(f"/fhir/ImagingStudy/$analyze?subject=Patient/{pid}", content=images[2].read_bytes(),
                         headers=_h(token, "image/png")).json()
    study_id, dr_id = bundle["entry"][4]["resource"]["id"], bundle["entry"][0]["resource"]["id"]
    assert client.delete(f"/fhir/ImagingStudy/{study_id}", headers=_h(token)).status_code == 200
    assert client.get(f"/fhir/ImagingStudy/{study_id}", headers=_h(token)).status_code == 410
    assert client.get(f"/fhir/DiagnosticReport/{dr_id}", headers=_h(token)).json()["status"] == "cancelled"
    assert client.get(f"/fhir/ImagingStudy?patient={pid}", headers=_h(token)).json()["total"] == 0
    assert client.get(f"/fhir/ImagingStudy/{study_id}/_history/1", headers=_h(token)).status_code == 200


def test_analyze_parameters_and_dicom_without_subject(env):
    client, token, images = env
    pid = _patient(client, token, "AN-4")
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": f"Patient/{pid}"}},
        {"name": "image", "resource": {"resourceType": "Binary", "contentType": "image/png",
                                       "data": base64.b64encode(images[3].read_bytes()).decode()}}]}
    r = client.post("/fhir/ImagingStudy/$analyze", content=json.dumps(params), headers=_h(token))
    assert r.status_code == 200 and r.json()["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"

    dicom = dicom_from_png(images[4].read_bytes(), patient_id="DCM-99", patient_name="Okafor^Chidi")
    r = client.post("/fhir/ImagingStudy/$analyze", content=dicom, headers=_h(token, "application/dicom"))
    assert r.status_code == 200, r.text
    subject = r.json()["entry"][0]["resource"]["subject"]["reference"]
    patient = client.get(f"/fhir/{subject}", headers=_h(token)).json()
    assert patient["name"][0]["family"] == "Okafor" and patient["identifier"][0]["value"] == "DCM-99"
    study = r.json()["entry"][4]["resource"]
    assert {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": "ACC-77"} in study["identifier"]
    again = client.post("/fhir/ImagingStudy/$analyze", content=dicom, headers=_h(token, "application/dicom"))
    assert again.json()["entry"][0]["resource"]["subject"]["reference"] == subject  # same MRN, same patient


def test_analyze_refusals(env):
    client, token, images = env
    pid = _patient(client, token, "AN-5")
    cases = [
        (f"?subject=Patient/{pid}", b"not an image", "image/png", 422),
        (f"?subject=Patient/{pid}", png8(), "image/gif", 415),
        ("", images[0].read_bytes(), "image/png", 400),  # no subject and not DICOM
        ("?subject=Patient/nobody", images[0].read_bytes(), "image/png", 404),
        ("?subject=Observation/1", images[0].read_bytes(), "image/png", 400),
    ]
    for query, body, ctype, status in cases:
        r = client.post(f"/fhir/ImagingStudy/$analyze{query}", content=body, headers=_h(token, ctype))
        assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome", (query, ctype, r.text)
    bad64 = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": f"Patient/{pid}"}},
        {"name": "image", "resource": {"resourceType": "Binary", "contentType": "image/png", "data": "@@@"}}]}
    assert client.post("/fhir/ImagingStudy/$analyze", content=json.dumps(bad64), headers=_h(token)).status_code == 400
    reader = None
    with writing(client.app.state.services.engine) as s:
        reader = create_client(s, "reader-an", ["system/ImagingStudy.read"], actor="test")[1]
    r = client.post(f"/fhir/ImagingStudy/$analyze?subject=Patient/{pid}", content=images[0].read_bytes(),
                    headers=_h(reader, "image/png"))
    assert r.status_code == 403
    listing = client.get(f"/fhir/ImagingStudy?patient={pid}", headers=_h(token)).json()
    assert listing["total"] == 0  # nothing was stored for any refusal


def test_full_queue_and_unwritable_image_store_are_503_and_store_nothing(env, tmp_path):
    from contextlib import ExitStack

    from cxr_fhir.storage.image_store import ImageStore

    client, token, images = env
    pid = _patient(client, token, "AN-6")
    services = client.app.state.services
    url = f"/fhir/ImagingStudy/$analyze?subject=Patient/{pid}"
    with ExitStack() as held:  # every slot taken, as by other uploads in progress
        for _ in range(services.queue.capacity):
            held.enter_context(services.queue.admitted())
        r = client.post(url, content=images[0].read_bytes(), headers=_h(token, "image/png"))
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "queue is full" in r.text

    broken = ImageStore(tmp_path / "images")
    (tmp_path / "images").rmdir()
    (tmp_path / "images").write_text("x")  # now every write fails, as on a full or read-only disk
    kept = services.images
    services.images = broken
    try:
        r = client.post(url, content=images[0].read_bytes(), headers=_h(token, "image/png"))
    finally:
        services.images = kept
    assert r.status_code == 503 and r.headers["retry-after"] == "30" and "nothing was stored" in r.text
    assert client.get(f"/fhir/ImagingStudy?patient={pid}", headers=_h(token)).json()["total"] == 0
    ok = client.post(url, content=images[0].read_bytes(), headers=_h(token, "image/png"))
    assert ok.status_code == 200  # and the service goes on once the fault is gone


def test_database_failing_after_the_study_is_stored_is_not_a_503_to_retry(env, monkeypatch):
    """A 503 tells a client to send the image again: only right while nothing was stored. A database
    error after the study and report are committed must say so instead (no second study on retry)."""
    from sqlalchemy.exc import OperationalError

    from cxr_fhir.api.fhir import analyze
    from cxr_fhir.storage.fhir import store

    client, token, images = env
    pid = _patient(client, token, "AN-7")
    real_read = store.read

    def failing_read(s, rtype, rid, *args, **kwargs):
        if rtype == "DiagnosticReport":
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return real_read(s, rtype, rid, *args, **kwargs)

    monkeypatch.setattr(analyze.store, "read", failing_read)
    r = client.post(f"/fhir/ImagingStudy/$analyze?subject=Patient/{pid}", content=images[1].read_bytes(),
                    headers=_h(token, "image/png"))
    monkeypatch.undo()
    assert r.status_code == 500 and "retry-after" not in r.headers, (r.status_code, r.text)
    listing = client.get(f"/fhir/ImagingStudy?patient={pid}", headers=_h(token)).json()
    assert listing["total"] == 1
    study_id = listing["entry"][0]["resource"]["id"]
    assert f"ImagingStudy/{study_id} and DiagnosticReport/" in r.text and "rather than uploading again" in r.text
