"""The DICOM Storage SCP against real peers: dcmtk's storescu/echoscu as the modality, pynetdicom as
an SCU; real NIH films made DX DICOM; the real models. Each refusal has its DIMSE status and an
audit row, stores nothing, and the listener answers C-ECHO afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.inference.pipeline import Pipeline
from cxr_fhir.records.tables import Analysis, Patient, Study
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage.db import make_engine
from support.dicom_films import (
    cr_from_png,
    dx_from_png,
    multiframe,
    nih_films,
    non_chest,
    read_uids,
    syntax_unavailable,
)
from support.dimse_scp import audit_rows, c_store, count, echo, echoscu, image_files, running_scp, storescu
from support.server import CLI, cli, environment, free_port

# dcmtk is the modality here (Debian `dcmtk`, `make dicom-tools`); dicom3tools' dciodvfy the validator.
pytestmark = pytest.mark.skipif(shutil.which("storescu") is None or shutil.which("dciodvfy") is None,
                                reason="dcmtk (storescu, echoscu) or dicom3tools (dciodvfy) not installed")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(PROJECT_ROOT / "weights", tmp_path_factory.mktemp("rt"), threads=2)


@pytest.fixture
def scp(tmp_path, pipeline):
    with running_scp(tmp_path / "var", pipeline, callers="MODALITY, PYSCU, PINNED@10.9.9.9") as pair:
        yield pair


def test_c_echo_from_dcmtk_and_pynetdicom(scp):
    server, _ = scp
    done = echoscu(server.port)
    assert done.returncode == 0, done.stderr
    assert echo(server.port) == 0x0000


def test_unknown_caller_is_rejected_and_audited(scp):
    server, services = scp
    done = echoscu(server.port, calling="STRANGER")
    assert done.returncode != 0 and "Calling AE Title Not Recognized" in done.stderr
    assert echo(server.port, calling="PINNED") is None  # allowed only from 10.9.9.9, we are 127.0.0.1
    rows = audit_rows(services.engine, "dicom-association")
    assert [(r.agent_id, r.outcome, r.source_ip) for r in rows] == [
        ("dicom:STRANGER", "4", "127.0.0.1"), ("dicom:PINNED", "4", "127.0.0.1")]
    assert all("not recognised" in (r.detail or "") for r in rows)
    wrong = echoscu(server.port, called="SOMEONE")  # a known caller, but not calling us
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr
    last = audit_rows(services.engine, "dicom-association")[-1]
    assert (last.agent_id, last.detail) == ("dicom:MODALITY", "association rejected: called AE title not recognised")
    assert echo(server.port) == 0x0000  # the listener is still up for those it knows


SYNTAXES = ["explicit", "implicit", "deflated", "jpeg-lossless", "jpeg-lossless-nh", "jpeg-baseline", "jpeg-ls",
            "jpeg2000"]


def test_storescu_sends_real_films_in_every_syntax(scp, shared_data, tmp_path):
    server, services = scp
    films = nih_films(shared_data, len(SYNTAXES))
    sent = {}
    for i, (syntax, png) in enumerate(zip(SYNTAXES, films, strict=True)):
        if reason := syntax_unavailable(syntax):
            pytest.skip(reason)
        path = dx_from_png(png, tmp_path / f"{syntax}.dcm", patient_id="MRN-77", issuer="HOSP",
                           patient_name="DOE^JANE", accession=f"ACC-{i}", syntax=syntax)
        assert read_uids(path)["syntax"] == str(dcmread(path).file_meta.TransferSyntaxUID)
        if syntax == "jpeg-lossless-nh":  # storescu cannot propose .57 (only .70): pynetdicom sends it
            assert c_store(server.port, [path], calling="MODALITY") == [(0x0000, "")]
        else:
            done = storescu(server.port, path, syntax=syntax)
            assert done.returncode == 0, (syntax, done.stderr[-500:])
            assert "Received Store Response (Success)" in done.stderr, syntax
        sent[read_uids(path)["sop"]] = (syntax, f"ACC-{i}", read_uids(path))
    with Session(services.engine) as s:
        studies = s.exec(select(Study)).all()
        patients = s.exec(select(Patient)).all()
        analysed = {a.study_id for a in s.exec(select(Analysis)).all()}
    assert len(studies) == len(SYNTAXES)
    # one patient, registered from the header, identified within its issuer
    assert [(p.mrn, p.mrn_system, p.family, p.given) for p in patients] == [
        ("MRN-77", "urn:cxr-fhir:issuer:HOSP", "DOE", "JANE")]
    for study in studies:
        syntax, accession, uids = sent[study.sop_instance_uid]
        assert study.status == "analyzed" and study.id in analysed, syntax
        assert (study.accession_number, study.study_uid, study.series_uid, study.sop_class_uid) == \
            (accession, uids["study"], uids["series"], uids["sop_class"])
        assert study.uploaded_by == "dicom:MODALITY" and study.media_type == "application/dicom"
    stored = audit_rows(services.engine, "dicom-store")
    assert len(stored) == len(SYNTAXES) and {r.outcome for r in stored} == {"0"}
    assert {r.entity_id for r in stored} == {s.id for s in studies}


def test_a_cr_film_is_taken_too(scp, shared_data, tmp_path):
    server, services = scp
    path = cr_from_png(nih_films(shared_data, 1)[0], tmp_path / "cr.dcm", patient_id="MRN-5", issuer=None)
    assert c_store(server.port, [path]) == [(0x0000, "")]
    with Session(services.engine) as s:
        study = s.exec(select(Study)).one()
        patient = s.get(Patient, study.patient_id)
    assert study.modality == "CR" and patient is not None
    assert patient.mrn_system == services.settings.hospital_mrn_system  # no issuer: the hospital's MRN


def test_the_same_instance_twice_is_one_study(scp, shared_data, tmp_path):
    server, services = scp
    path = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "once.dcm", patient_id="MRN-1")
    assert storescu(server.port, path).returncode == 0
    files = len(image_files(services))
    assert storescu(server.port, path).returncode == 0       # a modality resending: success again
    assert c_store(server.port, [path]) == [(0x0000, "")]   # and another node
    assert count(services.engine) == 1 and len(image_files(services)) == files
    rows = audit_rows(services.engine, "dicom-store")
    sop = read_uids(path)["sop"]
    again = f"SOPInstanceUID={sop} duplicate: already filed"
    assert [r.detail for r in rows] == [f"SOPInstanceUID={sop}", again, again]
    assert len({r.entity_id for r in rows}) == 1 and rows[0].entity_type == "ImagingStudy"


def _truncated(path: Path, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # cut in the middle of the pixel data
    return out


def test_bad_instances_are_refused_audited_and_store_nothing(tmp_path, pipeline, shared_data):
    png = nih_films(shared_data, 1)[0]
    good = dx_from_png(png, tmp_path / "good.dcm", patient_id="MRN-2")  # 512 x 512, 16 bits: ~0.5 MB
    big = dx_from_png(sorted((shared_data / "nih" / "originals").glob("*.png"))[0], tmp_path / "big.dcm",
                      patient_id="MRN-2")  # 1024 x 1024, 16 bits: ~2 MB
    cases = [
        ("truncated", _truncated(good, tmp_path / "cut.dcm"), True, 0xC001, "truncated"),
        ("CT", non_chest(png, tmp_path / "ct.dcm", patient_id="MRN-2"), False, 0xC010, "CT is not a radiograph"),
        ("multi-frame", multiframe(png, tmp_path / "mf.dcm", patient_id="MRN-2", syntax="jpeg-lossless"), False,
         0xA900, "multi-frame"),
        ("over the limit", big, False, 0xC040, "exceeds the limit"),
    ]
    # A 1 MB limit, so "over the limit" needs no 200 MB file (the check is the same).
    with running_scp(tmp_path / "var", pipeline, max_instance_bytes=1_000_000) as (server, services):
        for name, path, raw, status, words in cases:
            [(got, comment)] = c_store(server.port, [path], raw=raw)
            assert got == status, (name, hex(got), comment)
            assert words in comment and len(comment) <= 64, (name, comment)
            assert echo(server.port) == 0x0000, name  # the listener still answers
        assert count(services.engine) == 0 and image_files(services) == []
        rows = audit_rows(services.engine, "dicom-store")
        assert [r.outcome for r in rows] == ["4"] * len(cases)
        assert [r.detail.split(" ")[0] for r in rows] == ["0xC001", "0xC010", "0xA900", "0xC040"]
        assert {r.agent_id for r in rows} == {"dicom:PYSCU"}
        assert rows[-1].detail.endswith(f"(SOPInstanceUID={read_uids(big)['sop']})")
        assert echoscu(server.port).returncode == 0


def test_a_full_queue_refuses_for_now_and_stores_nothing(tmp_path, pipeline, shared_data):
    path = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "x.dcm", patient_id="MRN-4")
    with running_scp(tmp_path / "var", pipeline, max_queued=0) as (server, services):
        with services.queue.admitted():  # the one slot taken, as by an upload from the pages
            [(status, comment)] = c_store(server.port, [path])
        assert status == 0xA700 and comment, comment  # out of resources: the modality sends it again later
        assert count(services.engine) == 0 and image_files(services) == []
        assert [r.detail.split(" ")[0] for r in audit_rows(services.engine, "dicom-store")] == ["0xA700"]
        assert c_store(server.port, [path]) == [(0x0000, "")]  # and once there is room, it is filed
        assert count(services.engine) == 1


def test_a_fault_inside_the_handler_is_a_processing_failure_and_the_listener_lives_on(tmp_path, pipeline,
                                                                                     shared_data):
    path = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "x.dcm", patient_id="MRN-6")
    with running_scp(tmp_path / "var", pipeline) as (server, services):
        db = Path(services.engine.url.database or "")
        services.engine.dispose()
        db.rename(db.with_suffix(".away"))  # the database file gone: every query now fails
        try:
            [(status, comment)] = c_store(server.port, [path])
        finally:
            services.engine.dispose()
            db.unlink(missing_ok=True)  # the empty file SQLite made meanwhile
            db.with_suffix(".away").rename(db)
        assert status == 0x0110 and "processing failure" in comment
        assert echo(server.port) == 0x0000
        assert c_store(server.port, [path]) == [(0x0000, "")]
        assert count(services.engine) == 1


def test_the_films_made_for_these_tests_are_valid_dicom(shared_data, tmp_path):
    """dciodvfy, the reference IOD validator, finds no error in what the modality sends."""
    png = nih_films(shared_data, 1)[0]
    made = [dx_from_png(png, tmp_path / "dx.dcm", patient_id="P", syntax="jpeg-lossless"),
            dx_from_png(png, tmp_path / "dx8.dcm", patient_id="P", bits=8),
            cr_from_png(png, tmp_path / "cr.dcm", patient_id="P")]
    for path in made:
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (path.name, errors)


def test_an_instance_without_models_is_refused_for_now(tmp_path, shared_data):
    path = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "x.dcm", patient_id="MRN-3")
    with running_scp(tmp_path / "var", None) as (server, services):
        assert c_store(server.port, [path]) == [(0xA700, "analysis unavailable: the models are not loaded")]
        assert count(services.engine) == 0


BURST = 200
ASSOCIATIONS = 4


@pytest.mark.slow
def test_a_burst_from_four_associations_loses_nothing(tmp_path, pipeline, shared_data):
    """Every instance ends as a study or a refusal with its reason; none is lost."""
    films = nih_films(shared_data, BURST)
    paths = [dx_from_png(png, tmp_path / f"b{i}.dcm", patient_id=f"MRN-{i % 25}",
                         syntax="jpeg-lossless" if i % 2 else "explicit") for i, png in enumerate(films)]
    shares = [paths[k::ASSOCIATIONS] for k in range(ASSOCIATIONS)]
    with running_scp(tmp_path / "var", pipeline) as (server, services):
        start = time.perf_counter()
        with ThreadPoolExecutor(ASSOCIATIONS) as pool:
            answers = [a for share in pool.map(lambda share: c_store(server.port, share), shares) for a in share]
        seconds = time.perf_counter() - start
        print(f"\n{BURST} instances over {ASSOCIATIONS} associations: {seconds:.1f} s, "
              f"{sum(s != 0 for s, _ in answers)} refused")
        assert len(answers) == BURST
        refused = [(s, c) for s, c in answers if s != 0x0000]
        assert all(c for _, c in refused), refused  # every refusal says why
        with Session(services.engine) as s:
            studies = s.exec(select(Study)).all()
            patients = s.exec(select(Patient)).all()
        assert len(studies) == BURST - len(refused)
        assert {st.sop_instance_uid for st in studies} <= {read_uids(p)["sop"] for p in paths}
        assert len(patients) == 25  # each new patient registered once, though films raced
        assert all(st.status in ("analyzed", "failed") for st in studies)
        assert len(audit_rows(services.engine, "dicom-store")) == BURST
        assert echo(server.port) == 0x0000


def test_dicom_listen_command_files_what_a_modality_sends(tmp_path, shared_data):
    """The real `cxr-fhir dicom listen` process: it loads the models as `serve` does, says where it
    listens, takes a film from storescu, and stops cleanly on SIGTERM."""
    port = free_port()
    env = environment(tmp_path / "var", CXR_DICOM_PORT=str(port), CXR_DICOM_ALLOWED_CALLERS="MODALITY")
    assert cli(env, "db", "upgrade").returncode == 0
    film = dx_from_png(nih_films(shared_data, 1)[0], tmp_path / "a.dcm", patient_id="MRN-9")
    proc = subprocess.Popen([CLI, "dicom", "listen"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())  # printed once listening (models loaded first)
        assert started["listening"]["port"] == port and started["listening"]["callers"] == ["MODALITY"]
        assert echoscu(port).returncode == 0
        done = storescu(port, film)
        assert done.returncode == 0, done.stderr[-500:]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'cxr-fhir.db'}")
    try:
        assert count(engine) == 1
    finally:
        engine.dispose()


def test_serve_runs_the_scp_when_enabled_and_stops_it(tmp_path):
    from litestar.testing import TestClient

    port = free_port()
    settings = Settings(runtime_dir=tmp_path / "var", load_models=False, _env_file=None, dicom_listen=True,
                        dicom_port=port, dicom_allowed_callers="PYSCU")
    with TestClient(create_app(settings)):
        assert echo(port) == 0x0000
    assert echo(port) is None  # stopped with the app
