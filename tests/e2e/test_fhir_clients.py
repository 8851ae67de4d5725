"""The running server (`cxr-fhir serve`, real models) driven by two third-party FHIR clients,
fhirpy and fhirclient, and by sekmet-fhir's REST conformance smoke scenario."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from cxr_fhir.settings import PROJECT_ROOT
from support.server import environment, migrate_and_token, serving

SEKMET = Path(os.environ.get("CXR_SEKMET_BIN", PROJECT_ROOT / ".venv-sekmet" / "bin" / "sekmet"))
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(FHIR base URL, bearer token) of a freshly started server on SQLite with the models loaded."""
    root = tmp_path_factory.mktemp("serve")
    env = environment(root / "var")
    token = migrate_and_token(env)
    with serving(env, root / "server.log") as base:
        yield f"{base}/fhir", token


def _patient_body(family: str, mrn: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": family, "given": ["Test"]}], "gender": "male", "birthDate": "1980-01-01"}


def test_fhirpy_create_search_read_update_page_and_include(server, shared_data):
    from fhirpy import SyncFHIRClient

    base, token = server
    client = SyncFHIRClient(base, authorization=f"Bearer {token}")
    created = []
    for i in range(12):
        p = client.resource("Patient", **_patient_body(f"Fhirpy{i:02d}", f"FP-{i}"))
        p.save()
        created.append(p)
    assert all(p.id for p in created)

    found = client.resources("Patient").search(family="fhirpy").sort("family").limit(5)
    assert found.count() == 12
    names = [p["name"][0]["family"] for p in found.fetch_all()]  # follows the next links
    assert names == [f"Fhirpy{i:02d}" for i in range(12)]

    p = client.reference("Patient", created[3].id).to_resource()
    p["gender"] = "other"
    p.save()
    assert client.resources("Patient").search(_id=created[3].id).get()["gender"] == "other"
    assert client.reference("Patient", created[3].id).to_resource()["meta"]["versionId"] == "2"

    # an analysed X-ray, then its report with the patient and findings included
    image = sorted((shared_data / "nih" / "originals").glob("*.png"))[5].read_bytes()
    r = httpx.post(f"{base}/ImagingStudy/$analyze", params={"subject": f"Patient/{created[0].id}"},
                   content=image, headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
                   timeout=120)
    assert r.status_code == 200, r.text
    reports = (client.resources("DiagnosticReport").search(patient=created[0].id)
               .include("DiagnosticReport", "subject").include("DiagnosticReport", "result"))
    resources = reports.fetch_raw()
    kinds = sorted(e["resource"]["resourceType"] for e in resources["entry"])
    assert kinds == ["DiagnosticReport", "Observation", "Observation", "Observation", "Patient"]


def test_fhirclient_create_search_read_update_page_and_include(server):
    from fhirclient import server as fc_server
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.humanname import HumanName
    from fhirclient.models.identifier import Identifier
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    base, token = server

    class Auth:
        """fhirclient's hook for credentials: a static bearer token."""

        def can_sign_headers(self) -> bool:
            return True

        def signed_headers(self, headers: dict) -> dict:
            return {**headers, "Authorization": f"Bearer {token}"}

        def reset(self) -> None:
            pass

    smart = fc_server.FHIRServer(None, base_uri=base + "/")
    smart.auth = Auth()
    ids = []
    for i in range(7):
        p = Patient()
        p.name = [HumanName({"family": f"Fhirclient{i}", "given": ["Test"]})]
        p.identifier = [Identifier({"system": MRN, "value": f"FC-{i}"})]
        p.gender = "female"
        created = p.create(smart)
        assert created["resourceType"] == "Patient"
        ids.append(created["id"])

    first = Patient.where(struct={"family": "fhirclient", "_count": "3"}).perform(smart)
    assert first.total == 7 and len(first.entry) == 3
    pages, bundle, seen = 1, first, [e.resource.id for e in first.entry]
    while (nxt := next((link.url for link in bundle.link if link.relation == "next"), None)):
        bundle = Bundle(smart.request_json(nxt))
        seen += [e.resource.id for e in bundle.entry]
        pages += 1
    assert pages == 3 and sorted(seen) == sorted(ids)

    p = Patient.read(ids[0], smart)
    p.birthDate = None
    p.gender = "male"
    p.update(smart)
    assert Patient.read(ids[0], smart).gender == "male"

    obs = Observation({"status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                       "subject": {"reference": f"Patient/{ids[1]}"}, "valueQuantity": {
                           "value": 80, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
    obs.create(smart)
    included = Observation.where(struct={"subject": f"Patient/{ids[1]}", "_include": "Observation:subject"}
                                 ).perform(smart)
    modes = sorted((e.search.mode, e.resource.resource_type) for e in included.entry)
    assert modes == [("include", "Patient"), ("match", "Observation")]


def test_sekmet_conformance_smoke_scenario_passes(server, tmp_path):
    if not SEKMET.exists():
        pytest.skip(f"sekmet-fhir not installed at {SEKMET} (make test installs it into .venv-sekmet)")
    base, token = server
    config = {"simulator": {"enabled": False}, "data_dir": str(tmp_path / "data"),
              "identifiers": {"mrn": MRN},
              "peers": {"cxr": {"base_url": base, "auth": {"type": "bearer", "token": token}}}}
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(config))
    reports = tmp_path / "reports"
    run = subprocess.run([str(SEKMET), "scenario", "run", "conformance_smoke", "--peer", "cxr", "--no-serve",
                          "--report-dir", str(reports), "-c", str(tmp_path / "settings.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    (result,) = json.loads(next(reports.rglob("results.json")).read_text())
    assert result["status"] == "passed"
    steps = {step["name"]: step["status"] for step in result["steps"]}
    # Only the XML step may skip: this server speaks JSON and its CapabilityStatement says so.
    assert [name for name, status in steps.items() if status != "passed"] == [
        "Answers FHIR XML when asked (Accept application/fhir+xml)"], steps
    assert result["counts"]["passed"] >= 17
    artifacts = PROJECT_ROOT / "test-artifacts" / "sekmet"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "conformance_smoke.txt").write_text(run.stdout)
