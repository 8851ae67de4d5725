"""DICOM identity: a UID names one patient's study, and a header that names the patient differently
from the record is filed (matched on PatientID) but flagged for the doctor, as PACS reconciliation does."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.domain.identity import name_mismatch
from cxr_fhir.security.clients import create_client
from cxr_fhir.security.users import create_user
from cxr_fhir.settings import Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import writing
from support.images import dicom_from_png

FHIR = "application/fhir+json"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared_data) -> Iterator[tuple[TestClient, str, list[Path]]]:
    root = tmp_path_factory.mktemp("identity")
    settings = Settings(runtime_dir=root / "var", load_models=True, _env_file=None)
    app = create_app(settings)
    migrate.upgrade(app.state.services.engine, settings.migrations_dir)
    with writing(app.state.services.engine) as s:
        token = create_client(s, "pacs-bridge", ["system/*.*"], actor="test")[1]
        create_user(s, "dr.kim", PASSWORD, "doctor", actor="test")
    with TestClient(app, timeout=120) as client:
        assert app.state.services.models is not None, app.state.services.model_error
        yield client, token, sorted((shared_data / "nih" / "originals").glob("*.png"))


def _analyze(client: TestClient, token: str, dicom: bytes, subject: str | None = None):
    url = "/fhir/ImagingStudy/$analyze" + (f"?subject={subject}" if subject else "")
    return client.post(url, content=dicom, headers={"Authorization": f"Bearer {token}",
                                                    "Content-Type": "application/dicom", "Accept": FHIR})


def _patient(client: TestClient, token: str, mrn: str, family: str, given: str) -> str:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": mrn}],
            "name": [{"family": family, "given": [given]}]}
    r = client.post("/fhir/Patient", content=json.dumps(body),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_uid_of_another_patients_study_is_refused_and_nothing_is_stored(env):
    client, token, images = env
    first = _patient(client, token, "ID-1", "Ahn", "Minji")
    second = _patient(client, token, "ID-2", "Baek", "Junho")
    film = dicom_from_png(images[0].read_bytes(), patient_id="ID-1", patient_name="Ahn^Minji")
    assert _analyze(client, token, film, f"Patient/{first}").status_code == 200
    reused = _analyze(client, token, film, f"Patient/{second}")  # the same UIDs, another patient
    assert reused.status_code == 422, reused.text
    issue = reused.json()["issue"][0]
    assert "uid-conflict" in issue["diagnostics"] and "StudyInstanceUID" in issue["diagnostics"]
    headers = {"Authorization": f"Bearer {token}", "Accept": FHIR}
    assert client.get(f"/fhir/ImagingStudy?subject=Patient/{second}", headers=headers).json()["total"] == 0
    again = _analyze(client, token, film, f"Patient/{first}")  # the same patient may send it again
    assert again.status_code == 200, again.text


def test_a_differing_name_is_filed_under_the_patient_id_and_flagged(env):
    client, token, images = env
    pid = _patient(client, token, "ID-3", "Choi", "Seoyeon")
    film = dicom_from_png(images[1].read_bytes(), patient_id="ID-3", patient_name="Jung^Hoseok")
    r = _analyze(client, token, film)  # no subject: matched on PatientID
    assert r.status_code == 200, r.text
    study = next(e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
    assert study["subject"]["reference"] == f"Patient/{pid}"
    assert "Jung Hoseok" in study["note"][0]["text"] and "Choi Seoyeon" in study["note"][0]["text"]
    same = dicom_from_png(images[2].read_bytes(), patient_id="ID-3", patient_name="CHOI^Seoyeon")
    agreed = next(e["resource"] for e in _analyze(client, token, same).json()["entry"]
                  if e["resource"]["resourceType"] == "ImagingStudy")
    assert "note" not in agreed
    # The doctor sees it on the result page.
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"username": "dr.kim", "password": PASSWORD, "_csrf_token": csrf},
                       follow_redirects=False).status_code == 303
    page = client.get(f"/studies/{study['id']}")
    assert page.status_code == 200 and 'id="identity-warning"' in page.text and "Jung Hoseok" in page.text
    assert 'id="identity-warning"' not in client.get(f"/studies/{agreed['id']}").text


@pytest.mark.parametrize(("header", "family", "given", "flagged"), [
    ("Doe^Jane", "Doe", "Jane", False), ("DOE^JANE^M", "Doe", "Jane M", False), ("Doe", "Doe", "Jane", False),
    ("Nguyễn^Thị", "Nguyen", "Thi", False), ("Doe^John", "Doe", "Jane", True), ("Roe^Jane", "Doe", "Jane", True),
    (None, "Doe", "Jane", False), ("^", "Doe", "Jane", False)])
def test_name_comparison(header, family, given, flagged):
    assert (name_mismatch(header, family, given) is not None) is flagged


def test_uid_ownership_is_checked_on_both_databases(engine, tmp_path):
    """The UID check itself, on SQLite and PostgreSQL: another patient's study, series or instance
    UID is refused; the same patient's, or a deleted study's, is not."""
    from cxr_fhir.imaging import ImageRejected
    from cxr_fhir.records.tables import Study
    from cxr_fhir.services.analysis import _check_uids_belong_to
    from cxr_fhir.storage.image_store import ImageStore
    from cxr_fhir.storage.repositories import StudyRepository
    from support.reports import make_report

    made = make_report(engine, ImageStore(tmp_path / "images"))
    other = make_report(engine, ImageStore(tmp_path / "images"))
    with writing(engine) as s:
        study = s.get(Study, made.study_id)
        owner, stranger = study.patient_id, s.get(Study, other.study_id).patient_id
        uids = {"study_uid": study.study_uid, "series_uid": study.series_uid,
                "sop_instance_uid": study.sop_instance_uid}
    for key, label in (("study_uid", "StudyInstanceUID"), ("series_uid", "SeriesInstanceUID"),
                       ("sop_instance_uid", "SOPInstanceUID")):
        with writing(engine) as s, pytest.raises(ImageRejected, match=label) as refused:
            _check_uids_belong_to(s, stranger, {key: uids[key]})
        assert refused.value.code == "uid-conflict"
    with writing(engine) as s:
        _check_uids_belong_to(s, owner, uids)  # its own patient: fine
        StudyRepository(s).soft_delete(made.study_id, actor="t")
    with writing(engine) as s:
        _check_uids_belong_to(s, stranger, uids)  # a deleted study holds its UIDs no more
