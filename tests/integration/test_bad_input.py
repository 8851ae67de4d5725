"""Bad input over the FHIR API and the web upload: each class gets a clear 4xx (never a 500), an
OperationOutcome (FHIR) or a message (web), and nothing stored changes.

"Nothing stored changes" is measured, not assumed: the rows of fhir_resource, its history, study and
patient (with their versions) and the files of the image store are snapshotted before and after.
The FHIR tests run on SQLite and PostgreSQL without the models; what needs an image decoded by the
upload path (bombs, malformed DICOM, sniffing) runs once per module with the real models.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from cxr_fhir.app import create_app
from cxr_fhir.imaging import ImageRejected, load
from cxr_fhir.security.clients import create_client
from cxr_fhir.security.users import create_user
from cxr_fhir.settings import Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import writing
from support.images import dicom_from_png, png8

FHIR = "application/fhir+json"
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
PASSWORD = "correct-horse-battery"
SMALL_LIMIT = 200_000  # Settings.max_upload_bytes for these tests


# -- helpers --------------------------------------------------------------------------------------

def snapshot(engine, image_dir: Path) -> dict:
    """Everything stored that bad input must not change (audit events are expected to grow)."""
    out: dict = {}
    with engine.connect() as conn:
        for table, cols in (("fhir_resource", "resource_type, id, version_id, deleted"),
                            ("fhir_resource_history", "resource_type, resource_id, version_id"),
                            ("fhir_index", "resource_type, resource_id, param, value"),
                            ("patient", "id, version_id, family, given, mrn"),
                            ("study", "id, version_id, status")):
            # The FHIR AuditEvents grow with the audit rows (every request is audited, refusals too).
            where = " WHERE resource_type <> 'AuditEvent'" if table.startswith("fhir_") else ""
            out[table] = sorted(tuple(map(str, r)) for r in conn.execute(text(f"SELECT {cols} FROM {table}{where}")))
    out["images"] = sorted(str(p.relative_to(image_dir)) for p in image_dir.rglob("*") if p.is_file())
    return out


def is_outcome(r, status: int | tuple[int, ...]) -> dict:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["severity"] == "error" and body["issue"][0]["diagnostics"]
    return body


def png_header(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares width x height greyscale pixels (a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # A few rows of zeros, deflated: the real thing would inflate to width*height bytes.
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _patient(family: str, mrn: str | None = None, given: list[str] | None = None, **extra) -> dict:
    name = {"family": family, "given": ["Ann"] if given is None else given}
    body = {"resourceType": "Patient", "name": [{k: v for k, v in name.items() if v}], "gender": "female", **extra}
    if mrn:
        body["identifier"] = [{"system": MRN, "value": mrn}]
    return body


class Api:
    def __init__(self, client: TestClient, token: str):
        self.client, self.token = client, token

    def __call__(self, method: str, url: str, body=None, ctype: str = FHIR, headers=None):
        h = {"Authorization": f"Bearer {self.token}", "Accept": FHIR}
        kw = {}
        if body is not None:
            h["Content-Type"] = ctype
            kw["content"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.update(headers or {})
        return self.client.request(method, url, headers=h, **kw)


# -- FHIR API without the models, SQLite and PostgreSQL -----------------------------------------------

@pytest.fixture
def fhir(tmp_path, db_url, engine) -> Iterator[tuple[Api, callable]]:
    settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False,
                        max_upload_bytes=SMALL_LIMIT, _env_file=None)
    app = create_app(settings)
    with writing(engine) as s:
        token = create_client(s, "fuzzer", ["system/*.*", "system/AuditEvent.read"], actor="test")[1]
    with TestClient(app) as client:
        api = Api(client, token)
        # Something stored for bad input to (not) change.
        for family, mrn in (("Lovelace", "M-1"), ("O'Brien_%", "M-2"), ("Zoë", "M-3")):
            assert api("POST", "/fhir/Patient", _patient(family, mrn)).status_code == 201
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Patient/nobody"}, "effectiveDateTime": "2024-05-01T10:00:00+02:00"}
        assert api("POST", "/fhir/Observation", obs).status_code == 201
        images = settings.effective_image_store_dir
        yield api, (lambda: snapshot(engine, images))


def test_oversized_bodies_are_413(fhir):
    api, state = fhir
    before = state()
    # Beyond the router's body limit (1.4 x max_upload_bytes + 64 KiB: room for base64): Litestar's 413.
    huge = json.dumps(_patient("Big", "M-big", text={"status": "generated",
                                                     "div": "<div>" + "x" * 400_000 + "</div>"})).encode()
    is_outcome(api("POST", "/fhir/Patient", huge), 413)
    is_outcome(api("POST", "/fhir", huge), 413)
    # A raw image over max_upload_bytes but under the body limit: our own 413, before the models are asked.
    body = is_outcome(api("POST", "/fhir/ImagingStudy/$analyze?subject=Patient/x", b"\x89PNG" + b"0" * SMALL_LIMIT,
                          ctype="image/png"), 413)
    assert "larger than" in body["issue"][0]["diagnostics"]
    # The same image base64 in a Parameters resource.
    params = {"resourceType": "Parameters", "parameter": [{"name": "image", "resource": {
        "resourceType": "Binary", "contentType": "image/png",
        "data": base64.b64encode(b"\x89PNG" + b"0" * (SMALL_LIMIT + 10)).decode()}}]}
    is_outcome(api("POST", "/fhir/ImagingStudy/$analyze", params), 413)
    assert state() == before


def test_oversized_bundle_is_413_and_stores_nothing(fhir):
    api, state = fhir
    before = state()
    entries = [{"request": {"method": "GET", "url": "Patient?family=x"}} for _ in range(501)]
    body = is_outcome(api("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries}), 413)
    assert "501 entries" in body["issue"][0]["diagnostics"]
    creates = [{"fullUrl": f"urn:uuid:{i:08d}-0000-4000-8000-000000000000",
                "resource": _patient(f"Many{i}"), "request": {"method": "POST", "url": "Patient"}} for i in range(501)]
    is_outcome(api("POST", "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": creates}), 413)
    assert state() == before


@pytest.mark.parametrize("raw", [b'{"resourceType": "Patient",', b"\xff\xfe not utf-8", b"", b"NaN-ish {",
                                 b"[1, 2, 3]", b"null", b'"Patient"', b"42", b'{"resourceType": "Patient", "name": 5}',
                                 b'{"resourceType": "Patient", "name": [{"family": ["x"]}]}',
                                 b'{"resourceType": "Patient", "birthDate": "1999-02-31"}',
                                 b'{"resourceType": "Patient", "unknownElement": true}'])
def test_malformed_json_is_400(fhir, raw):
    api, state = fhir
    before = state()
    is_outcome(api("POST", "/fhir/Patient", raw), 400)
    is_outcome(api("PUT", "/fhir/Patient/some-id", raw), 400)
    is_outcome(api("POST", "/fhir", raw), 400)
    is_outcome(api("POST", "/fhir/ImagingStudy/$analyze", raw), 400)
    assert state() == before


@pytest.mark.parametrize("bundle", [
    {"resourceType": "Bundle", "type": "transaction", "entry": {"request": "x"}},
    {"resourceType": "Bundle", "type": "transaction", "entry": [7]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": 5, "resource": {"resourceType": "Patient"},
                                                                 "request": {"method": "POST", "url": "Patient"}}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "PUT", "url": "Patient/1",
                                                                             "ifMatch": 3}, "resource": []}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST", "url": "Patient",
                                                                             "ifNoneExist": ["x"]}}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "PUT",
                                                                             "url": "Patient?family=Nobody"},
                                                                 "resource": [1]}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "GET", "url": "/"}}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "GET", "url": "Nope/1"}}]},
    {"resourceType": "Bundle", "type": "collection"},
])
def test_malformed_bundles_are_4xx(fhir, bundle):
    api, state = fhir
    before = state()
    is_outcome(api("POST", "/fhir", bundle), (400, 404, 412, 422))
    assert state() == before


def test_wrong_resource_type_is_refused(fhir):
    api, state = fhir
    before = state()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    body = is_outcome(api("POST", "/fhir/Patient", obs), 400)
    assert body["issue"][0]["expression"] == ["resourceType"]
    is_outcome(api("PUT", "/fhir/Patient/abc", {**obs, "id": "abc"}), 400)
    is_outcome(api("POST", "/fhir/Patient", {"name": [{"family": "NoType"}]}), 400)
    is_outcome(api("POST", "/fhir/Spaceship", {"resourceType": "Spaceship"}), 404)
    is_outcome(api("GET", "/fhir/Spaceship?name=x"), 404)
    # $analyze takes Parameters, not a Patient.
    is_outcome(api("POST", "/fhir/ImagingStudy/$analyze", _patient("X")), 400)
    # A transaction entry whose resource is not the type its URL names.
    tx = {"resourceType": "Bundle", "type": "transaction",
          "entry": [{"resource": _patient("Fine", "M-9"), "request": {"method": "POST", "url": "Patient"}},
                    {"resource": obs, "request": {"method": "POST", "url": "Patient"}}]}
    is_outcome(api("POST", "/fhir", tx), 400)
    assert state() == before


TRAVERSALS = ["/fhir/Binary/..%2F..%2Fetc%2Fpasswd", "/fhir/Binary/..%2F..%2F..%2Fsecret_key",
              "/fhir/Patient/..%2F..", "/fhir/Patient/..%2F..%2Fmetadata", "/fhir/Binary/%2e%2e%2f%2e%2e%2fsecret_key",
              "/fhir/Binary/" + "0" * 62 + "..", "/fhir/Patient/%00", "/fhir/Patient/..%5C..%5Cwindows"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_404(fhir, path):
    api, state = fhir
    before = state()
    r = api("GET", path)
    body = is_outcome(r, (400, 404))
    assert "root:" not in r.text and "secret" not in json.dumps(body).lower().replace("secret_key", "")
    is_outcome(api("DELETE", path), (400, 404, 405))
    assert state() == before


TOKEN_PARAMS = {"identifier", "identifier:not", "gender", "active"}
INJECTIONS = ["' OR '1'='1", "'; DROP TABLE patient; --", "%", "_", "\\", "%%", "\\%", "a%' --", '" OR ""="',
              "Robert'); DELETE FROM fhir_resource;--", "$", "|", "\\|", "\\,", "*", "1 OR 1=1", "%00", "ü%_"]


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_in_search_values_matches_nothing_and_changes_nothing(fhir, value):
    api, state = fhir
    before = state()
    for param in ("family", "name", "family:contains", "family:exact", "identifier", "gender", "_id",
                  "identifier:not", "active", "_sort", "_elements"):
        r = api("GET", "/fhir/Patient?" + _q(param, value))
        # One right answer each: _sort takes a parameter's name, and none is named so (400); a token that is
        # only the separator, "|", has neither a system nor a code (400); any other value is text to match,
        # and matching nothing is an empty Bundle (200). Unknown _elements are ignored, as R4 allows.
        expected = 400 if param == "_sort" or (param in TOKEN_PARAMS and value == "|") else 200
        assert r.status_code == expected, (param, r.status_code, r.text[:300])
        body = r.json()
        if r.status_code == 200:
            assert body["resourceType"] == "Bundle"
            if param == "family:contains":  # only the one name that holds the characters literally
                literal = re.sub(r"\\(.)", r"\1", value).lower()
                assert body["total"] == (1 if literal and literal in "o'brien_%" else 0), (value, body["total"])
            elif param not in ("identifier:not", "_elements"):
                assert body["total"] == 0, (param, value, body["total"])  # a wildcard never matches everything
        else:
            is_outcome(r, 400)
    for param in ("birthdate", "_lastUpdated", "date"):
        url = ("/fhir/Observation?" if param == "date" else "/fhir/Patient?") + _q(param, value)
        is_outcome(api("GET", url), 400)  # not a date
    for param in ("subject", "subject:Patient.family", "patient"):
        r = api("GET", "/fhir/Observation?" + _q(param, value))
        # A reference (or a chained name) is matched, never parsed as syntax: no such patient, no results.
        assert r.status_code == 200, (param, r.status_code, r.text[:300])
        assert r.json()["total"] == 0
    assert state() == before


def test_like_metacharacters_are_letters(fhir):
    api, _ = fhir
    found = lambda q: api("GET", "/fhir/Patient?" + q).json()["total"]  # noqa: E731
    assert found("family=O'Brien_%25") == 1 and found("family=o'b") == 1
    assert found("family=O'Brien__") == 0 and found("family:contains=_%25") == 1
    assert found("family:contains=%25") == 1 and found("family=%25") == 0
    assert found("family=zoe") == 1  # accent-insensitive still works


def _q(key: str, value: str) -> str:
    from urllib.parse import urlencode

    return urlencode([(key, value)])


UNICODE_NAMES = ["Zoe\u0308", "José María", "\U0001F600 Smile", "محمد", "שָׁלוֹם", "Ŝtraße-Ǆ", "李", "A\u200dB"]


@pytest.mark.parametrize("family", UNICODE_NAMES)
def test_unicode_names_round_trip(fhir, family):
    api, _ = fhir
    r = api("POST", "/fhir/Patient", _patient(family, given=[]))
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    read = api("GET", f"/fhir/Patient/{pid}").json()
    assert read["name"][0]["family"] == family  # exactly as sent, not normalised
    found = api("GET", "/fhir/Patient?" + _q("family:exact", family)).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [pid]


@pytest.mark.parametrize("bad", ["Nul\x00l", "Esc\x1b[31m", "Bell\x07", "Del\x7f", "C1\x85"])
def test_control_characters_in_names_are_422_naming_the_field(fhir, bad):
    api, state = fhir
    before = state()
    body = is_outcome(api("POST", "/fhir/Patient", _patient(bad, "M-ctl")), 422)
    assert body["issue"][0]["expression"] == ["Patient.name.family"]
    assert "control" in body["issue"][0]["diagnostics"]
    body = is_outcome(api("POST", "/fhir/Patient", {**_patient("Fine", "M-ctl2"),
                                                    "telecom": [{"system": "phone", "value": f"55{bad}5"}]}), 422)
    assert "telecom" in body["issue"][0]["expression"][0]
    assert state() == before


@pytest.mark.parametrize("bad", ["\x00", "a\x00b", "\x1b", "x\x01"])
def test_control_characters_in_search_values_are_400(fhir, bad):
    api, state = fhir
    before = state()
    for param in ("family", "identifier", "_id", "birthdate", "active", "name:exact"):
        is_outcome(api("GET", "/fhir/Patient?" + _q(param, bad)), 400)
    assert state() == before


def test_control_characters_in_other_resources_are_422(fhir):
    api, state = fhir
    before = state()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "bad\x00text"}}
    body = is_outcome(api("POST", "/fhir/Observation", obs), 422)
    assert body["issue"][0]["expression"] == ["Observation.code.text"]
    assert state() == before


# -- the loader itself (no app): bombs, malformed DICOM, sniffing ---------------------------------------

def test_loader_refuses_bombs_and_malformed_files():
    with pytest.raises(ImageRejected) as exc:
        load(png_header(30000, 30000))
    assert exc.value.code == "too-large"
    with pytest.raises(ImageRejected) as exc:
        load(png_header(9000, 9000), max_pixels=50_000_000)
    assert exc.value.code == "too-large"
    dicom = dicom_from_png(png8(), "MRN-X")
    for broken in (dicom[:200], dicom[:len(dicom) // 2], dicom[:132] + b"\x00" * 64, dicom[:128] + b"DICM" + b"\xff" * 300):
        with pytest.raises(ImageRejected) as exc:
            load(broken)
        assert exc.value.code in ("corrupt", "not-an-image"), exc.value.code
    for fake in (b"GIF89a" + b"\x00" * 300, b"<script>alert(1)</script>", b"%PDF-1.7\n" + b"0" * 500, b"\x89PNG"):
        with pytest.raises(ImageRejected):
            load(fake)


# -- with the real models: $analyze and the web upload (SQLite, once per module) -----------------------

@pytest.fixture(scope="module")
def loaded(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("bad-upload")
    settings = Settings(runtime_dir=root / "var", load_models=True, max_upload_bytes=600_000, _env_file=None)
    app = create_app(settings)
    engine = app.state.services.engine
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        token = create_client(s, "uploader", ["system/*.*"], actor="test")[1]
        create_user(s, "dr.grey", PASSWORD, "doctor", actor="test")
    radiograph = sorted((shared_data / "nih" / "originals").glob("*.png"))[0].read_bytes()
    with TestClient(app, timeout=120) as client:
        assert app.state.services.models is not None, app.state.services.model_error
        api = Api(client, token)
        r = api("POST", "/fhir/Patient", _patient("Upload", "UP-1"))
        assert r.status_code == 201
        pid = r.json()["id"]
        # Log in through the pages, as a doctor does.
        page = client.get("/login").text
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page).group(1)
        r = client.post("/login", data={"username": "dr.grey", "password": PASSWORD, "_csrf_token": csrf},
                        follow_redirects=False)
        assert r.status_code == 303
        token_page = client.get(f"/patients/{pid}").text
        web_csrf = re.search(r'"x-csrftoken": "([^"]+)"', token_page).group(1)
        yield dict(api=api, client=client, pid=pid, csrf=web_csrf, radiograph=radiograph, settings=settings,
                   state=lambda: snapshot(engine, settings.effective_image_store_dir))


def _web_upload(env, files: list[tuple[str, bytes, str]]):
    return env["client"].post(f"/patients/{env['pid']}/studies", headers={"x-csrftoken": env["csrf"], "HX-Request": "true"},
                              files=[("files", f) for f in files])


BAD_IMAGES = {
    "bomb": (png_header(30000, 30000), "image/png", "too large"),
    "text-named-png": (b"this is not an image at all" * 20, "image/png", "not a PNG, JPEG or DICOM"),
    "html-named-png": (b"<html><script>alert(1)</script></html>", "image/png", "not a PNG, JPEG or DICOM"),
    "truncated-dicom": (None, "application/dicom", "pixel data is truncated or malformed"),
    "dicom-preamble-only": (b"\x00" * 128 + b"DICM" + b"\x02\x00" * 40, "application/dicom", "holds no image"),
    "empty": (b"", "image/png", "empty"),
}


def _bad(name: str) -> tuple[bytes, str, str]:
    data, ctype, message = BAD_IMAGES[name]
    if data is None:
        dicom = dicom_from_png(png8(), "MRN-TRUNC")
        data = dicom[: len(dicom) // 2]
    return data, ctype, message


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_analyze_refuses_bad_images_with_422(loaded, name):
    api, before = loaded["api"], loaded["state"]()
    data, ctype, message = _bad(name)
    if data:  # an empty raw body is a 400/422 either way; Parameters needs some data
        r = api("POST", f"/fhir/ImagingStudy/$analyze?subject=Patient/{loaded['pid']}", data, ctype=ctype)
        body = is_outcome(r, 422)
        assert message in body["issue"][0]["diagnostics"] and body["issue"][0]["expression"] == ["Binary.data"]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": f"Patient/{loaded['pid']}"}},
        {"name": "image", "resource": {"resourceType": "Binary", "contentType": ctype,
                                       "data": base64.b64encode(data).decode()}}]}
    is_outcome(api("POST", "/fhir/ImagingStudy/$analyze", params), (400, 422))
    # DICOM without a subject: the header is read first (to find the patient), refusals are 422 too.
    if ctype == "application/dicom":
        is_outcome(api("POST", "/fhir/ImagingStudy/$analyze", data, ctype=ctype), 422)
    assert loaded["state"]() == before


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_web_upload_refuses_bad_images_with_a_message(loaded, name):
    before = loaded["state"]()
    data, ctype, message = _bad(name)
    r = _web_upload(loaded, [(f"{name}.png", data, ctype)])
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert "was not accepted" in r.text and message in r.text.replace("&#39;", "'")
    assert loaded["state"]() == before


@pytest.mark.slow
def test_web_upload_over_the_size_limit_is_413(loaded):
    before = loaded["state"]()
    too_big = loaded["radiograph"] + b"\x00" * (loaded["settings"].max_upload_bytes + 1)
    r = _web_upload(loaded, [("big.png", too_big, "image/png")])
    assert r.status_code == 413 and "larger than" in r.text
    # A request body beyond what ten files may carry is refused before it is read.
    r = loaded["client"].post(f"/patients/{loaded['pid']}/studies",
                              headers={"x-csrftoken": loaded["csrf"], "HX-Request": "true",
                                       "Content-Type": "multipart/form-data; boundary=xyz",
                                       "Content-Length": str(loaded["settings"].max_upload_bytes * 11 + 2**20)},
                              content=b"--xyz--\r\n")
    assert r.status_code == 413
    # A chunked body declares no length: it is counted as it arrives and refused past the limit.
    limit = loaded["settings"].max_upload_bytes * 10 + 2**20

    def chunks():
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    r = loaded["client"].post(f"/patients/{loaded['pid']}/studies", content=chunks(),
                              headers={"x-csrftoken": loaded["csrf"], "HX-Request": "true",
                                       "Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413
    assert loaded["state"]() == before


@pytest.mark.slow
def test_content_is_sniffed_not_the_extension_or_content_type(loaded):
    """A real PNG named .dcm and sent as image/jpeg is analysed as the PNG it is; the stored file is
    addressed by its digest, so a traversal in the filename names nothing on disk."""
    api = loaded["api"]
    r = api("POST", f"/fhir/ImagingStudy/$analyze?subject=Patient/{loaded['pid']}", loaded["radiograph"],
            ctype="image/jpeg")
    assert r.status_code == 200, r.text
    study = r.json()["entry"][-1]["resource"]
    assert study["resourceType"] == "ImagingStudy"
    before_files = set(loaded["state"]()["images"])
    store = loaded["settings"].effective_image_store_dir
    name = "../../../escaped.png"
    r = _web_upload(loaded, [(name, loaded["radiograph"][:-12] + b"\x00" * 0 + loaded["radiograph"][-12:], "application/dicom"),
                             ("x.dcm", b"not an image" * 50, "application/dicom")])
    assert r.status_code == 200 and "was not accepted" in r.text  # one analysed, one refused
    assert not list(store.parents[2].rglob("escaped.png")) and not list(Path("/tmp").glob("escaped.png"))
    after_files = set(loaded["state"]()["images"])
    assert after_files >= before_files and all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}", f)
                                               for f in after_files)


@pytest.mark.parametrize("path", ["/fhir/Patient/" + "a" * 65, "/fhir/" + "P" * 40, "/fhir/" + "P" * 40 + "/1",
                                  "/fhir/Patient/x/_history/99999999999999999999", "/fhir/Patient/x/_history/2147483648",
                                  "/fhir/Patient?_offset=99999999999999999999", "/fhir/Patient?_count=1e3",
                                  "/fhir/Patient/_history?_offset=99999999999999999999",
                                  "/fhir/AuditEvent/%00", "/fhir/AuditEvent?action=%00", "/fhir/Patient/%1b/_history"])
def test_out_of_range_ids_and_numbers_are_4xx(fhir, path):
    api, state = fhir
    before = state()
    is_outcome(api("GET", path), (400, 404))
    assert state() == before


def test_refused_requests_are_still_audited(fhir, engine):
    api, _ = fhir
    is_outcome(api("GET", "/fhir/Patient/%00"), 404)
    is_outcome(api("GET", "/fhir/" + "P" * 40), 404)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT entity_id, entity_type, outcome FROM audit_event "
                                 "WHERE outcome = '4' ORDER BY recorded")).all()
    assert ("\\x00", "Patient", "4") in [tuple(r) for r in rows]
    assert any(r[1] and r[1].startswith("PPP") and len(r[1]) <= 32 for r in rows)


@pytest.mark.parametrize("element", [{"birthDate": 0}, {"active": "true"}, {"gender": 1},
                                     {"name": [{"family": 5}]}, {"multipleBirthBoolean": 1}])
def test_values_of_the_wrong_json_type_are_400_not_coerced(fhir, element):
    """Found by the hypothesis property: birthDate 0 was stored as 1970-01-01."""
    api, state = fhir
    before = state()
    body = is_outcome(api("POST", "/fhir/Patient", {**_patient("Typed", "M-typed"), **element}), 400)
    assert body["issue"][0]["expression"][0].startswith(f"Patient.{next(iter(element))}")
    assert state() == before


@pytest.mark.parametrize("body", [
    {"resourceType": "Bundle", "type": "batch", "entry": 13115814387089569792},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": 5}]},
    {"resourceType": "Parameters", "parameter": 7},
    {"resourceType": "Parameters", "parameter": [{"name": ["image"]}]},
    {"resourceType": "Parameters", "parameter": [{"name": "image", "resource": {
        "resourceType": "Binary", "contentType": "image/png", "data": {"x": 1}}}]},
    {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueReference": {"reference": 5}},
        {"name": "image", "resource": {"resourceType": "Binary", "contentType": "image/png", "data": "iVBORw0KGgo="}}]},
])
def test_wrong_json_shapes_found_by_schemathesis_are_400(fhir, body):
    """Found by tests/integration/test_schemathesis.py (each was a 500: TypeError/AttributeError)."""
    api, state = fhir
    before = state()
    url = "/fhir" if body["resourceType"] == "Bundle" else "/fhir/ImagingStudy/$analyze"
    is_outcome(api("POST", url, body), 400)
    assert state() == before


def test_digits_that_are_not_decimal_are_4xx(fhir):
    """Found by schemathesis: '4¹'.isdigit() is true but int('4¹') raises (If-Match, vread, _offset)."""
    api, state = fhir
    pid = api("GET", "/fhir/Patient?family=Lovelace").json()["entry"][0]["resource"]["id"]
    before = state()
    is_outcome(api("PUT", f"/fhir/Patient/{pid}", {**_patient("Lovelace", "M-1"), "id": pid},
                   headers={"If-Match": 'W/"4¹"'.encode("latin-1")}), 400)
    is_outcome(api("DELETE", f"/fhir/Patient/{pid}", headers={"If-Match": "²".encode("latin-1")}), 400)
    tx = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "DELETE", "url": f"Patient/{pid}",
                                                                            "ifMatch": "4¹"}}]}
    r = api("POST", "/fhir", tx)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"].startswith("400")
    is_outcome(api("GET", f"/fhir/Patient/{pid}/_history/¹"), 404)
    is_outcome(api("GET", "/fhir/AuditEvent?_offset=³"), 400)
    is_outcome(api("GET", "/fhir/AuditEvent?_offset=99999999999999999999"), 400)
    assert state() == before


def test_web_forms_with_non_decimal_digits_are_not_500(tmp_path, db_url, engine):
    settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False, _env_file=None)
    with writing(engine) as s:
        create_user(s, "dr.grey", PASSWORD, "doctor", actor="test")
    with TestClient(create_app(settings)) as client:
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        assert client.post("/login", data={"username": "dr.grey", "password": PASSWORD, "_csrf_token": csrf},
                           follow_redirects=False).status_code == 303
        token = re.search(r'"x-csrftoken": "([^"]+)"', client.get("/patients/new").text).group(1)
        r = client.post("/patients/new", data={"family": "Digit", "mrn": "D-1"}, headers={"x-csrftoken": token},
                        follow_redirects=False)
        pid = r.headers["location"].rsplit("/", 1)[1]
        before = snapshot(engine, settings.effective_image_store_dir)
        r = client.post(f"/patients/{pid}/edit", data={"family": "Digit", "mrn": "D-1", "version": "¹"},
                        headers={"x-csrftoken": token}, follow_redirects=False)
        # The hidden version is the edit's concurrency check: one that is not a number is refused with the
        # form shown again (422), not dropped so that the edit overwrites whatever is stored (a 303).
        assert r.status_code == 422, r.status_code
        assert snapshot(engine, settings.effective_image_store_dir)["patient"] == before["patient"]
        assert client.get("/patients", params={"triage": "²"}).status_code == 200
        # Control characters typed into the pages: a search finds nothing, a name is refused with its field.
        for q in ("\x00", "a\x00b", "\x1b[2J", "%_\\"):
            r = client.get("/patients", params={"q": q})
            assert r.status_code == 200 and "Digit" not in r.text, q
        # Ids with control characters in the pages' paths name nothing (PostgreSQL refused U+0000: a 500).
        for path in ("/patients/%00", "/patients/a%00b/edit", "/studies/%00", "/studies/%1b/image.png"):
            assert client.get(path).status_code == 404, path
        for path in ("/patients/%00/studies", "/reports/%00/confirm", "/studies/%00/delete"):
            assert client.post(path, headers={"x-csrftoken": token}).status_code == 404, path
        # An upload for a patient who does not exist is a 404 (it was a 503 'models not loaded' here).
        assert client.post("/patients/nobody/studies", headers={"x-csrftoken": token},
                           files=[("files", ("x.png", png8(), "image/png"))]).status_code == 404
        for big in ("99999999999999999999", "-5", "1e9"):
            # A page number out of range is clamped (the handler's min/max): the search page, not an error.
            assert client.get("/patients", params={"page_no": big}).status_code == 200, big
        r = client.post("/patients/new", data={"family": "Nul\x00", "mrn": "D-2"}, headers={"x-csrftoken": token},
                        follow_redirects=False)
        assert r.status_code == 422 and "control characters" in r.text
        assert snapshot(engine, settings.effective_image_store_dir)["study"] == before["study"]


@pytest.mark.parametrize("raw", [b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
                                 b'{"resourceType": "Patient", "multipleBirthInteger": 1' + b"0" * 5000 + b"}",
                                 b'{"resourceType": "Patient", "extension": [' + b"{}," * 30_000 + b"{}]}"])
def test_pathological_json_is_4xx(fhir, raw):
    """Deep nesting (a RecursionError in the parser), a 5000-digit number, 30000 empty objects."""
    api, state = fhir
    before = state()
    for url in ("/fhir/Patient", "/fhir", "/fhir/ImagingStudy/$analyze"):
        is_outcome(api("POST", url, raw), (400, 413, 422))
    assert state() == before
