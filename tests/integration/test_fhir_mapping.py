"""What we emit is valid FHIR R4: a real upload mapped and checked by an independent validator."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from cxr_fhir.fhir import mapping
from cxr_fhir.inference.pipeline import Pipeline
from cxr_fhir.records.tables import Patient
from cxr_fhir.services.analysis import AnalysisService
from cxr_fhir.settings import PROJECT_ROOT
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.image_store import ImageStore
from cxr_fhir.storage.repositories import PatientRepository
from support.fhir_validator import validate


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("fhir")
    engine = make_engine(f"sqlite:///{root / 'db.sqlite'}")
    migrate.upgrade(engine, PROJECT_ROOT / "migrations")
    images = ImageStore(root / "img")
    pipeline = Pipeline(PROJECT_ROOT / "weights", root, threads=2)
    with writing(engine) as s:
        p = PatientRepository(s).create(Patient(mrn="MRN-77", mrn_system="urn:oid:2.16.840.1.113883.3.9999.1",
                                                family="Ñúñez", given="Ana María", birth_date=date(1955, 3, 4),
                                                sex="female"), actor="t")
    data = sorted((shared_data / "nih" / "originals").glob("*.png"))[0].read_bytes()
    up = AnalysisService(engine, images, pipeline, destinations=(), max_image_pixels=80_000_000).upload(
        p.id, data, "chest.png", actor="dr.a")
    return p, up, images, pipeline


def _never_null(value) -> bool:
    if value is None or value == [] or value == {} or value == "":
        return False
    if isinstance(value, dict):
        return all(_never_null(v) for v in value.values())
    if isinstance(value, list):
        return all(_never_null(v) for v in value)
    return True


def test_every_emitted_resource_is_valid_r4(uploaded):
    patient, up, images, pipeline = uploaded
    obs = mapping.observations(up.analysis, up.study, up.report)
    overlay = images.get(up.analysis.overlays[up.analysis.top3[0]["finding"]])
    resources = [mapping.patient(patient), mapping.imaging_study(up.study),
                 mapping.device(pipeline.model_info.as_dict()),
                 *obs, mapping.diagnostic_report(up.report, up.analysis, up.study, obs, overlay)]
    wire = [mapping.to_wire(r) for r in resources]
    results = validate(wire)
    assert [r["issues"] for r in results] == [[]] * len(wire), json.dumps(results, indent=1)
    assert all(_never_null(w) for w in wire)
    assert [w["resourceType"] for w in wire] == ["Patient", "ImagingStudy", "Device", "Observation", "Observation",
                                                 "Observation", "DiagnosticReport"]


def test_content_follows_the_profile_we_promise(uploaded):
    patient, up, images, pipeline = uploaded
    study = mapping.to_wire(mapping.imaging_study(up.study))
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{up.study.study_uid}"}
    assert study["modality"][0] == {"system": mapping.DICOM_DCM, "code": "DX"}
    assert study["series"][0]["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.7"
    obs = [mapping.to_wire(o) for o in mapping.observations(up.analysis, up.study, up.report)]
    first = obs[0]
    assert first["meta"]["security"][0]["code"] == "AIAST" and first["status"] == "preliminary"
    assert first["code"]["coding"][-1]["system"] == "urn:cxr-fhir:finding"
    assert first["valueCodeableConcept"]["coding"][0]["code"] in {"52101004", "2667000"}
    assert first["component"][0]["valueQuantity"]["value"] == up.analysis.top3[0]["probability"]
    report = mapping.to_wire(mapping.diagnostic_report(up.report, up.analysis, up.study,
                                                       mapping.observations(up.analysis, up.study, up.report)))
    assert report["code"]["coding"][0]["code"] == "36554-4" and "performer" not in report
    assert [c["code"] for c in report["category"][0]["coding"]] == ["RAD", "LP29684-5"]
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in obs]
    pt = mapping.to_wire(mapping.patient(patient))
    assert pt["name"][0] == {"family": "Ñúñez", "given": ["Ana", "María"]} and pt["birthDate"] == "1955-03-04"


def test_ehr_transaction_bundle_is_valid_and_conditional(uploaded):
    from cxr_fhir.fhir.bundles import ehr_transaction

    patient, up, images, _ = uploaded
    bundle = mapping.to_wire(ehr_transaction(patient, up.study, up.analysis, up.report,
                                             images.get(up.analysis.overlays[up.analysis.top3[0]["finding"]])))
    assert validate([bundle])[0]["issues"] == []
    assert bundle["type"] == "transaction" and _never_null(bundle)
    entries = bundle["entry"]
    methods = [(e["request"]["method"], e["request"]["url"].split("?")[0]) for e in entries]
    assert methods == [("POST", "Patient"), ("POST", "ImagingStudy"), ("PUT", "Device"), ("PUT", "Observation"),
                       ("PUT", "Observation"), ("PUT", "Observation"), ("PUT", "DiagnosticReport")]
    assert entries[0]["request"]["ifNoneExist"] == "identifier=urn%3Aoid%3A2.16.840.1.113883.3.9999.1%7CMRN-77"
    assert entries[1]["request"]["ifNoneExist"].startswith("identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A")
    full_urls = {e["fullUrl"] for e in entries}
    assert all(u.startswith("urn:uuid:") for u in full_urls)
    text = json.dumps(bundle)
    for local_id in (patient.id, up.study.id):
        assert f"Patient/{local_id}" not in text and f"ImagingStudy/{local_id}" not in text
    report = entries[-1]["resource"]
    assert report["subject"]["reference"] == entries[0]["fullUrl"]
    assert report["imagingStudy"][0]["reference"] == entries[1]["fullUrl"]
    assert [r["reference"] for r in report["result"]] == [e["fullUrl"] for e in entries[3:6]]
    assert all(e["resource"]["device"]["reference"] == entries[2]["fullUrl"] for e in entries[3:6])
    # Every reference in the bundle points at one of its own entries.
    refs = set(re.findall(r"\"reference\": \"([^\"]+)\"", text))
    assert refs <= full_urls, refs - full_urls
    assert all("id" not in e["resource"] for e in entries)
    assert report["meta"]["security"][0]["code"] == "AIAST"
