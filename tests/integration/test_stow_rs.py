"""DICOMweb STOW-RS against `cxr-fhir serve` (real models, SQLite), with dicomweb-client as the
client and raw HTTP for what a well-behaved client never sends.

Real NIH chest films made DX instances; refused ones (a CT in a Secondary Capture, a CT Image, a
truncated file, garbage, a PNG part, an oversized part, another study's instance) each get the
FailureReason of the one refusal table, an audit event, and nothing stored: no study row with its
SOP Instance UID and not its bytes in the image store.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlmodel import Session, col, select

from cxr_fhir.api.dicomweb.multipart import MalformedMultipart, MediaTypeError, boundary_of, split
from cxr_fhir.imaging.dicom_status import (
    CANNOT_UNDERSTAND,
    CORRUPT,
    DATASET_MISMATCH,
    INSTANCE_TOO_LARGE,
    NOT_A_CHEST_FILM,
    OUT_OF_RESOURCES,
    REFUSAL_STATUS,
    SOP_CLASS_NOT_SUPPORTED,
    refusal_status,
)
from cxr_fhir.records.tables import AuditEvent, Study
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage.db import make_engine
from cxr_fhir.storage.image_store import ImageStore
from support.dicom_films import CT_IMAGE, dx_from_png, nih_films, non_chest
from support.server import cli, environment, migrate_and_token, serving

pytestmark = [pytest.mark.slow, pytest.mark.data]

MAX_INSTANCE = 8 * 1024 * 1024  # CXR_DICOM_MAX_INSTANCE_BYTES here: a 1024x1024 film is 2 MiB
BOUNDARY = "stow-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, REFERENCED, FAILURE_REASON = "00081198", "00081199", "00081197"
SOP_INSTANCE, RETRIEVE_URL = "00081155", "00081190"


@dataclass
class Node:
    base: str
    writer: str  # system/ImagingStudy.write
    reader: str  # system/*.* (to look at what became of the instances through FHIR)
    wrong: str  # system/Patient.read: may not store
    settings: Settings
    films: list[Path]
    work: Path

    def studies_with_sop(self, sop_uid: str) -> list[Study]:
        with Session(make_engine(self.settings.effective_database_url)) as s:
            return list(s.exec(select(Study).where(col(Study.sop_instance_uid) == sop_uid)).all())

    def audit(self, subtype: str) -> list[AuditEvent]:
        with Session(make_engine(self.settings.effective_database_url)) as s:
            return list(s.exec(select(AuditEvent).where(col(AuditEvent.subtype) == subtype)).all())

    def in_store(self, data: bytes) -> bool:
        return ImageStore(self.settings.effective_image_store_dir).exists(hashlib.sha256(data).hexdigest())

    def dx(self, n: int, name: str, **kw: Any) -> Path:
        return dx_from_png(self.films[n], self.work / f"{name}.dcm", **{"patient_id": f"STOW-{name}", **kw})


def _token(env: dict[str, str], name: str, scope: str) -> str:
    made = cli(env, "clients", "create", name, "--scope", scope)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().rsplit(" ", 1)[-1]


@pytest.fixture(scope="module")
def node(tmp_path_factory, shared_data) -> Iterator[Node]:
    """One server for the module (the models take a while to load). No queue behind the running
    analysis (CXR_MAX_QUEUED_ANALYSES=0), so a second request during an analysis is out of resources."""
    root = tmp_path_factory.mktemp("stow")
    env = environment(root / "var", CXR_DICOM_MAX_INSTANCE_BYTES=str(MAX_INSTANCE), CXR_MAX_QUEUED_ANALYSES="0")
    writer = migrate_and_token(env, "pacs", "system/ImagingStudy.write")
    reader, wrong = _token(env, "reader", "system/*.*"), _token(env, "nosy", "system/Patient.read")
    settings = Settings(runtime_dir=root / "var", _env_file=None)
    work = root / "films"
    with serving(env, root / "server.log") as base:
        yield Node(base, writer, reader, wrong, settings, nih_films(shared_data, 8), work)


def _client(node: Node):
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(url=f"{node.base}/dicomweb", headers={"Authorization": f"Bearer {node.writer}"})


def _multipart(parts: list[tuple[str, bytes]]) -> bytes:
    out = b"preamble, ignored\r\n"
    for ctype, data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _post(node: Node, parts: list[tuple[str, bytes]], *, path: str = "/dicomweb/studies", token: str | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"Content-Type": STOW_TYPE, "Authorization": f"Bearer {token or node.writer}", **(headers or {})}
    return httpx.post(f"{node.base}{path}", content=_multipart(parts), headers=sent, timeout=300)


def _failures(answer: dict[str, Any]) -> dict[str | None, int]:
    """SOP Instance UID (None when the part had none) -> FailureReason."""
    return {(item.get(SOP_INSTANCE) or {}).get("Value", [None])[0]: item[FAILURE_REASON]["Value"][0]
            for item in answer.get(FAILED, {}).get("Value", [])}


def _fhir_studies(node: Node, study_uid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{node.base}/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"},
                  headers={"Authorization": f"Bearer {node.reader}"}, timeout=30)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_two_films_are_stored_read_back_by_dicomweb_client_and_are_studies(node):
    paths = [node.dx(0, "a", accession="ACC-A"), node.dx(1, "b")]
    datasets = [pydicom.dcmread(p) for p in paths]
    answer = _client(node).store_instances(datasets)  # raises on anything but 2xx
    referenced = answer.ReferencedSOPSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced] == [str(d.SOPInstanceUID) for d in datasets]
    assert [str(i.ReferencedSOPClassUID) for i in referenced] == [str(d.SOPClassUID) for d in datasets]
    assert "FailedSOPSequence" not in answer
    assert str(referenced[0].RetrieveURL).endswith(
        f"/dicomweb/studies/{datasets[0].StudyInstanceUID}/series/{datasets[0].SeriesInstanceUID}"
        f"/instances/{datasets[0].SOPInstanceUID}")
    for ds in datasets:
        (study,) = _fhir_studies(node, str(ds.StudyInstanceUID))
        assert study["series"][0]["instance"][0]["uid"] == str(ds.SOPInstanceUID)
        (row,) = node.studies_with_sop(str(ds.SOPInstanceUID))
        assert row.status == "analyzed" and row.uploaded_by == "client:pacs"
    assert node.studies_with_sop(str(datasets[0].SOPInstanceUID))[0].accession_number == "ACC-A"
    stored = [e for e in node.audit("stow-instance") if e.outcome == "0"]
    assert {e.entity_id for e in stored} >= {node.studies_with_sop(str(d.SOPInstanceUID))[0].id for d in datasets}


def test_the_same_instance_again_is_a_success_and_still_one_study(node):
    path = node.dx(2, "again")
    ds = pydicom.dcmread(path)
    first = _client(node).store_instances([ds])
    again = _post(node, [("application/dicom", path.read_bytes())], path=f"/dicomweb/studies/{ds.StudyInstanceUID}")
    assert again.status_code == 200, again.text
    assert again.headers["content-type"] == "application/dicom+json"
    assert again.json()[RETRIEVE_URL]["Value"] == [f"{node.base}/dicomweb/studies/{ds.StudyInstanceUID}"]
    assert [i[SOP_INSTANCE]["Value"][0] for i in again.json()[REFERENCED]["Value"]] == [str(ds.SOPInstanceUID)]
    assert str(first.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == str(ds.SOPInstanceUID)
    assert len(node.studies_with_sop(str(ds.SOPInstanceUID))) == 1
    assert len(_fhir_studies(node, str(ds.StudyInstanceUID))) == 1
    events = [e.detail or "" for e in node.audit("stow-instance") if str(ds.SOPInstanceUID) in (e.detail or "")]
    assert sorted(d.rsplit(" ", 1)[-1] for d in events) == ["duplicate", "stored"]


def test_a_mixed_request_stores_the_good_film_and_refuses_each_bad_one_with_its_reason(node):
    good = node.dx(3, "good").read_bytes()
    ct_in_sc = non_chest(node.films[4], node.work / "ct-sc.dcm", patient_id="STOW-ct").read_bytes()
    ct_image = non_chest(node.films[4], node.work / "ct.dcm", patient_id="STOW-ct2", sop_class=CT_IMAGE).read_bytes()
    whole = node.dx(5, "cut").read_bytes()
    truncated = whole[: len(whole) * 3 // 5]
    sops = [str(pydicom.dcmread(node.work / f"{n}.dcm", stop_before_pixels=True).SOPInstanceUID)
            for n in ("good", "ct-sc", "ct", "cut")]
    r = _post(node, [("application/dicom", b) for b in (good, ct_in_sc, ct_image, truncated)])
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    answer = r.json()
    assert [i[SOP_INSTANCE]["Value"][0] for i in answer[REFERENCED]["Value"]] == [sops[0]]
    assert _failures(answer) == {sops[1]: NOT_A_CHEST_FILM, sops[2]: SOP_CLASS_NOT_SUPPORTED, sops[3]: CORRUPT}
    assert len(node.studies_with_sop(sops[0])) == 1
    for sop, data in zip(sops[1:], (ct_in_sc, ct_image, truncated), strict=True):
        assert node.studies_with_sop(sop) == [] and not node.in_store(data)
        (event,) = [e for e in node.audit("stow-instance") if e.detail and sop in e.detail]
        assert event.outcome == "4" and event.agent_id == "pacs" and "FailureReason 0x" in (event.detail or "")
    (request_event,) = [e for e in node.audit("stow-rs") if e.detail and "-> 202" in e.detail]
    assert "1 stored, 3 failed" in (request_event.detail or "")


def test_nothing_stored_is_409_with_a_reason_for_every_part(node):
    other = node.dx(6, "other-study")
    other_sop = str(pydicom.dcmread(other, stop_before_pixels=True).SOPInstanceUID)
    png = node.films[6].read_bytes()
    huge = b"\0" * (MAX_INSTANCE + 1)
    r = _post(node, [("application/dicom", other.read_bytes()), ("image/png", png),
                     ("application/dicom", b"this is not DICOM at all"), ("application/dicom", huge)],
              path="/dicomweb/studies/1.2.826.0.1.3680043.8.498.1")
    assert r.status_code == 409, r.text
    failed = r.json()[FAILED]["Value"]
    assert [f[FAILURE_REASON]["Value"][0] for f in failed] == [DATASET_MISMATCH, CANNOT_UNDERSTAND, CORRUPT,
                                                               INSTANCE_TOO_LARGE]
    assert failed[0][SOP_INSTANCE]["Value"] == [other_sop] and SOP_INSTANCE not in failed[1]
    assert REFERENCED not in r.json() and RETRIEVE_URL not in r.json()
    assert "retry-after" not in r.headers  # an oversized instance will not fit later either
    assert node.studies_with_sop(other_sop) == []
    assert not any(node.in_store(b) for b in (other.read_bytes(), png, huge))


def test_a_second_request_while_the_models_are_busy_is_503_out_of_resources(node):
    """No queue (CXR_MAX_QUEUED_ANALYSES=0): during another request's analyses an instance is
    refused at once with 0xA700 and Retry-After, and nothing of it is stored. (A late request that
    slips in between two of the first request's instances is analysed instead, and that instance of
    the first request is then the one refused with 0xA700: each ends one way or the other.)"""
    paths = [node.dx(n % 8, f"busy-{n}") for n in range(12)]
    first_sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    late = [node.dx(7, f"late-{n}") for n in range(40)]  # each a new instance: a resend is never queued
    done: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: done.setdefault(
        "first", _post(node, [("application/dicom", p.read_bytes()) for p in paths])))
    worker.start()
    time.sleep(0.3)  # the first request is under way
    busy = None
    try:
        for path in late:
            if not worker.is_alive():
                break
            r = _post(node, [("application/dicom", path.read_bytes())])
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                busy = (r, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), path)
                break
    finally:
        worker.join(timeout=600)
    first = done["first"]
    assert first.status_code in (200, 202), first.text
    stored = {i[SOP_INSTANCE]["Value"][0] for i in first.json()[REFERENCED]["Value"]}
    assert stored and stored | set(_failures(first.json())) == first_sops
    assert set(_failures(first.json()).values()) <= {OUT_OF_RESOURCES}
    assert busy is not None, "no request was ever refused while the models were busy"
    r, sop, path = busy
    assert int(r.headers["retry-after"]) >= 1
    assert _failures(r.json()) == {sop: OUT_OF_RESOURCES} and REFERENCED not in r.json()
    assert node.studies_with_sop(sop) == [] and not node.in_store(path.read_bytes())
    (event,) = [e for e in node.audit("stow-instance") if e.detail and sop in e.detail]
    assert event.outcome == "8" and "0xA700 (busy)" in (event.detail or "")


def test_tokens_and_scopes_are_those_of_the_fhir_api(node):
    film = node.dx(3, "auth").read_bytes()
    sop = str(pydicom.dcmread(node.work / "auth.dcm", stop_before_pixels=True).SOPInstanceUID)
    anonymous = httpx.post(f"{node.base}/dicomweb/studies", content=_multipart([("application/dicom", film)]),
                           headers={"Content-Type": STOW_TYPE}, timeout=60)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    revoked = _post(node, [("application/dicom", film)], token="cxr_not-a-token")
    assert revoked.status_code == 401
    wrong = _post(node, [("application/dicom", film)], token=node.wrong)
    assert wrong.status_code == 403
    assert node.studies_with_sop(sop) == []
    outcomes = {(e.agent_id, e.outcome) for e in node.audit("stow-rs") if e.detail and "-> 40" in e.detail}
    assert {(None, "4"), ("nosy", "4")} <= outcomes


def test_wrong_media_types_and_broken_bodies(node):
    film = node.dx(3, "types").read_bytes()
    auth = {"Authorization": f"Bearer {node.writer}"}
    plain = httpx.post(f"{node.base}/dicomweb/studies", content=film,
                       headers={**auth, "Content-Type": "application/dicom"}, timeout=60)
    assert plain.status_code == 415
    xml_parts = _post(node, [("application/dicom", film)],
                      headers={"Content-Type": STOW_TYPE.replace("application/dicom", "application/dicom+xml")})
    assert xml_parts.status_code == 415
    unquoted = STOW_TYPE.replace('"application/dicom"', "application/dicom")
    wants_xml = _post(node, [("application/dicom", film)],
                      headers={"Content-Type": unquoted, "Accept": "application/dicom+xml"})
    assert wants_xml.status_code == 406
    cut = httpx.post(f"{node.base}/dicomweb/studies", content=_multipart([("application/dicom", film)])[:-40],
                     headers={**auth, "Content-Type": STOW_TYPE}, timeout=60)
    assert cut.status_code == 400 and "closing boundary" in cut.json()["detail"]
    no_parts = httpx.post(f"{node.base}/dicomweb/studies", content=f"--{BOUNDARY}--\r\n".encode(),
                          headers={**auth, "Content-Type": STOW_TYPE}, timeout=60)
    assert no_parts.status_code == 400
    sop = str(pydicom.dcmread(node.work / "types.dcm", stop_before_pixels=True).SOPInstanceUID)
    assert node.studies_with_sop(sop) == []


def test_a_body_over_the_limit_is_413_before_it_is_read(node):
    """Declared past ten instances at the per-instance limit: answered without a byte of body sent."""
    host, port = node.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {node.writer}\r\n"
                      f"Content-Type: {STOW_TYPE}\r\nContent-Length: {MAX_INSTANCE * 11}\r\n\r\n").encode())
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head[:200]


def test_a_token_that_may_not_store_is_403_before_the_body_is_read(node):
    """Within the size limit, but the scopes say no: answered without waiting for a byte of body, so
    such a token cannot make the server buffer a large request first."""
    host, port = node.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {node.wrong}\r\n"
                      f"Content-Type: {STOW_TYPE}\r\nContent-Length: {MAX_INSTANCE * 5}\r\n\r\n").encode())
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 403"), head[:200]


# --- no server needed: the framing and the refusal table ------------------------------------------


def test_every_refusal_code_raised_in_the_code_has_its_dicom_status():
    """A new ImageRejected code must be given a status here, not fall through to 0x0110."""
    raised = set()
    for path in (PROJECT_ROOT / "src" / "cxr_fhir").rglob("*.py"):
        raised |= set(re.findall(r'(?:ImageRejected|Refused)\(\s*"([a-z0-9-]+)"', path.read_text()))
    assert raised, "no refusal code found: the pattern no longer matches the code"
    assert sorted(raised - set(REFUSAL_STATUS)) == []
    assert refusal_status("corrupt") == CORRUPT and refusal_status("no-such-code") == CANNOT_UNDERSTAND


def test_the_multipart_framing_is_read_as_rfc_2046_writes_it():
    tricky = "a=b:c?d/e f"  # a quoted boundary may hold '=', ':', '?', '/' and spaces
    assert boundary_of(f'Multipart/Related; boundary="{tricky}"; type="application/dicom"') == tricky
    assert boundary_of("multipart/related;type=application/dicom;boundary=x") == "x"
    for wrong in ("application/dicom", "multipart/related; boundary=x", 'multipart/related; type="image/png"; '
                  "boundary=x", ""):
        with pytest.raises(MediaTypeError):
            boundary_of(wrong)
    with pytest.raises(MalformedMultipart):
        boundary_of('multipart/related; type="application/dicom"')
    body = (b"--x  \r\n\r\nno headers: the request's type\r\n--x\r\ncontent-type: Application/DICOM; a=b\r\n"
            b"X-Other: 1\r\n\r\ndata --x-- inside, \r\n--xy too\r\n--x--\r\nepilogue")
    first, second = split(body, "x")
    assert (first.index, first.content_type, first.data) == (1, "application/dicom", b"no headers: the request's type")
    assert (second.content_type, second.data) == ("application/dicom", b"data --x-- inside, \r\n--xy too")
    for broken in (b"no boundary at all", b"--x\r\nContent-Type: application/dicom\r\n\r\ndata",
                   b"--x\r\nno colon\r\n\r\ndata\r\n--x--", b"--xjunk\r\n\r\ndata\r\n--x--"):
        with pytest.raises(MalformedMultipart):
            split(broken, "x")


def test_without_the_models_a_store_is_503_with_retry_after_and_audited(settings):
    """In process (no server, no models): nothing can be analysed, so nothing is stored."""
    from litestar.testing import TestClient

    from cxr_fhir.app import create_app
    from cxr_fhir.security.clients import create_client
    from cxr_fhir.storage import migrate
    from cxr_fhir.storage.db import writing

    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        token = create_client(s, "pacs", ["system/*.write"], actor="test")[1]
    with TestClient(app=create_app(settings)) as client:
        r = client.post("/dicomweb/studies", content=_multipart([("application/dicom", b"DICM")]),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE})
    assert r.status_code == 503 and r.headers["retry-after"] == "30"
    with Session(engine) as s:
        (event,) = s.exec(select(AuditEvent).where(col(AuditEvent.subtype) == "stow-rs")).all()
        assert (event.agent_id, event.outcome) == ("pacs", "8")
        assert s.exec(select(Study)).all() == []
    engine.dispose()
