"""The PACS round trip with real components only: Debian's Orthanc as the PACS, dcmtk's storescu as
the modality, `cxr-fhir serve` (its DIMSE Storage SCP and outbox worker) as the AI node.

1. Routing: the modality sends real NIH films as DX (explicit VR little endian and JPEG lossless) to
   Orthanc; Orthanc's Lua rule forwards them to cxr-fhir; the SR and the Secondary Capture of each
   come back into Orthanc. Read from Orthanc's REST API: the SR parses with highdicom and states the
   findings, probabilities, thresholds and regions the FHIR API holds for the study, references the
   source instance, names the model (as the Device does) and is preliminary; SR and SC pass dciodvfy.
   `cxr-fhir loadtest-dicom` then measures three more films end to end.
2. Exactly once: with the PACS (and the RIS) down, 20 studies are sent straight to cxr-fhir and
   analysed; the PACS comes back on the same port: each study has exactly one SR and one SC there.
   Then the PACS goes down again, 8 more studies are analysed, it comes back, and the server is
   killed with SIGKILL while it delivers; restarted, it finishes: still exactly one of each.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest

from support.dciodvfy import dciodvfy_errors
from support.dicom_films import dx_from_png, nih_films, read_uids
from support.mllp import MllpReceiver
from support.orthanc import SECONDARY_CAPTURE, SR_STORAGE, Orthanc, available, orthanc
from support.server import CLI, environment, free_port, migrate_and_token, start

pytestmark = [pytest.mark.slow, pytest.mark.data,
              pytest.mark.skipif(available() is not None, reason=available() or "")]

CXR_AE = "CXRFHIR"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State Storage


# --- the pieces: server, modality, polling ------------------------------------------------------


def _server_env(tmp_path: Path, dicom_port: int, pacs: Orthanc, ris: tuple[str, int] | None) -> dict[str, str]:
    extra = {"CXR_RIS_MLLP_HOST": ris[0], "CXR_RIS_MLLP_PORT": str(ris[1])} if ris else {}
    return environment(
        tmp_path / "var", CXR_DICOM_LISTEN="true", CXR_DICOM_AE_TITLE=CXR_AE, CXR_DICOM_PORT=str(dicom_port),
        CXR_DICOM_ALLOWED_CALLERS="ORTHANC,MODALITY", CXR_PACS_AE_TITLE=pacs.aet, CXR_PACS_HOST="127.0.0.1",
        CXR_PACS_PORT=str(pacs.dicom_port), CXR_PACS_TIMEOUT_S="10",
        # the shared outbox policy, made quick: retry after 1-2 s, claims of a killed worker expire in 10 s
        CXR_EHR_RETRY_BASE_S="1", CXR_EHR_RETRY_MAX_S="2", CXR_EHR_LEASE_S="10", CXR_EHR_POLL_S="0.3",
        CXR_EHR_MAX_ATTEMPTS="10000",
        **extra)


@contextmanager
def _cxr(env: dict[str, str], log_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`cxr-fhir serve` (its SCP inside) until /ready and a C-ECHO answer; killed at exit."""
    log = open(log_path, "a")
    proc, base = start(env, log)
    try:
        _until(lambda: _echo(int(env["CXR_DICOM_PORT"])), 60, "the DICOM listener to answer C-ECHO")
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _echo(port: int) -> bool:
    run = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", CXR_AE, "127.0.0.1", str(port)],
                         capture_output=True, text=True, timeout=30)
    return run.returncode == 0


def storescu(port: int, called_ae: str, files: list[Path]) -> None:
    """The modality (dcmtk) sends ``files`` in one association; every C-STORE must succeed."""
    # -xs: JPEG lossless (SV1) proposed beside the uncompressed syntaxes, so each file goes as it is
    run = subprocess.run(["storescu", "-xs", "-aet", "MODALITY", "-aec", called_ae, "127.0.0.1", str(port),
                          *map(str, files)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Error" not in run.stderr, run.stdout[-2000:] + run.stderr[-2000:]


def _until(check: Callable[[], Any], within_s: float, what: str, every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _results(pacs: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Orthanc instance ids of the study's SR, SC, GSPS (if the PACS destination sends one) and film."""
    out: dict[str, list[str]] = {"sr": [], "sc": [], "gsps": [], "source": []}
    for i in pacs.find(StudyInstanceUID=study_uid):
        cls = pacs.tags(i)["SOPClassUID"]
        kind = "sr" if cls in SR_STORAGE else "sc" if cls == SECONDARY_CAPTURE else "gsps" if cls == GSPS else "source"
        out[kind].append(i)
    return out


def _all_results_in(pacs: Orthanc, study_uids: list[str]) -> bool:
    """Every study has its SR (Modality SR) and its Secondary Capture (Modality OT) in the PACS."""
    if pacs.proc is None:
        return False
    stored = pacs.modalities_by_study()
    return all(stored.get(u, {}).get("SR") and stored.get(u, {}).get("OT") for u in study_uids)


def _fhir(base: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{base}/fhir", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _reports_count(fhir: httpx.Client) -> int:
    r = fhir.get("/DiagnosticReport", params={"_summary": "count"})
    r.raise_for_status()
    return int(r.json()["total"])


def _films(tmp_path: Path, shared_data: Path, n: int, syntaxes: tuple[str, ...], tag: str,
           skip: int = 0) -> list[Path]:
    pngs = nih_films(shared_data, skip + n)[skip:]
    return [dx_from_png(png, tmp_path / "films" / f"{tag}-{k}.dcm", patient_id=f"PACS-{tag}-{k % 3}",
                        accession=f"A{tag}{k:04d}", syntax=syntaxes[k % len(syntaxes)])
            for k, png in enumerate(pngs)]


# --- what the SR says, against what the FHIR API says ---------------------------------------------


def _study_in_fhir(fhir: httpx.Client, study_uid: str) -> dict[str, Any]:
    """The study's ImagingStudy, DiagnosticReport, Observations and Device, through /fhir."""
    studies = fhir.get("/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}).json()
    assert studies.get("total", len(studies.get("entry", []))) == 1, studies
    study = studies["entry"][0]["resource"]
    reports = fhir.get("/DiagnosticReport", params={"imaging-study": f"ImagingStudy/{study['id']}"}).json()
    observations = fhir.get("/Observation", params={"part-of": f"ImagingStudy/{study['id']}"}).json()
    obs = [e["resource"] for e in observations.get("entry", [])]
    assert len(reports.get("entry", [])) == 1 and len(obs) == 3, (reports, observations)
    device = fhir.get(f"/{obs[0]['device']['reference']}").json()
    return {"study": study, "report": reports["entry"][0]["resource"], "observations": obs, "device": device}


def _component(obs: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [c for c in obs.get("component", []) if c["code"]["coding"][0]["code"] == code]


def _codes(obs: dict[str, Any]) -> set[tuple[str, str]]:
    scheme = {"http://snomed.info/sct": "SCT"}
    return {(scheme.get(c["system"], "99CXRFHIR"), c["code"]) for c in obs["code"]["coding"]}


def _walk(items: Any) -> Iterator[Any]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _algorithm(sr: pydicom.Dataset) -> dict[str, set[str]]:
    """Algorithm Name (DCM 111001) and Version (DCM 111003) wherever TID 4019 put them."""
    found: dict[str, set[str]] = {"111001": set(), "111003": set()}
    for item in _walk(sr.ContentSequence):
        code = item.ConceptNameCodeSequence[0].get("CodeValue") if "ConceptNameCodeSequence" in item else None
        if code in found and "TextValue" in item:
            found[code].add(str(item.TextValue))
    return found


def _groups_by_finding(sr: hd.sr.Comprehensive3DSR) -> dict[tuple[str, str], list[Any]]:
    groups = [*sr.content.get_planar_roi_measurement_groups(), *sr.content.get_image_measurement_groups()]
    out: dict[tuple[str, str], list[Any]] = {}
    for g in groups:
        ft = g.finding_type
        out.setdefault((ft.scheme_designator, ft.value), []).append(g)
    return out


def _value(group: Any, meaning: str) -> float:
    (m,) = [m for m in group.get_measurements() if m.name.meaning == meaning]
    return float(m.value)


def _check_group_against_observation(groups: list[Any], obs: dict[str, Any]) -> int:
    """The SR's groups of one finding state what its Observation does; the number of regions."""
    prob = _component(obs, "probability")[0]["valueQuantity"]["value"]
    threshold = _component(obs, "threshold")[0]["valueQuantity"]["value"]
    present = obs["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    for g in groups:
        assert abs(_value(g, "Probability") - prob) < 1e-4 and abs(_value(g, "Threshold Value") - threshold) < 1e-4
        # the finding's own evaluation (TID 4019's Algorithm Family is a coded item of the group too)
        (evaluation,) = [q for q in g.get_qualitative_evaluations() if q.name.value == g.finding_type.value]
        assert evaluation.value.meaning == ("Present" if present else "Absent")
    boxes = sorted(tuple(float(v) for v in c["valueString"].split(" ")[0].split(","))
                   for c in _component(obs, "bounding-box"))
    regions = sorted(_box_of(g) for g in groups if isinstance(g, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations))
    assert len(regions) == len(boxes), (regions, boxes)
    for region, box in zip(regions, boxes, strict=True):
        assert all(abs(a - b) < 0.51 for a, b in zip(region, box, strict=True)), (region, box)
    return len(regions)


def _box_of(group: Any) -> tuple[float, float, float, float]:
    roi = group.roi
    assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = roi.value
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def check_sr(sr_bytes: bytes, source: dict[str, str], fhir_view: dict[str, Any]) -> int:
    """Everything the SR must say; the number of regions (SCOORD) compared with the FHIR boxes."""
    ds = pydicom.dcmread(io.BytesIO(sr_bytes))
    sr = hd.sr.srread(io.BytesIO(sr_bytes))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert ds.StudyInstanceUID == source["study"] and ds.SeriesInstanceUID != source["series"]
    # preliminary until a doctor confirms it
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert fhir_view["report"]["status"] == "preliminary"
    # the source instance, as evidence and in every group
    evidence = {ref.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {source["sop"]}
    by_finding = _groups_by_finding(sr)
    for groups in by_finding.values():
        for g in groups:
            if isinstance(g, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations):
                refs = [str(g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
            else:
                refs = [str(s.referenced_sop_instance_uid) for s in g.source_images]
            assert refs == [source["sop"]]
    # the model: as the Device names it, in the algorithm identification and the contributing equipment
    name = fhir_view["device"]["deviceName"][0]["name"]
    version = fhir_view["device"]["version"][0]["value"]
    assert _algorithm(ds) == {"111001": {name}, "111003": {version}}
    (equipment,) = [e for e in ds.ContributingEquipmentSequence if e.get("ManufacturerModelName") == name]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
    assert version in list(equipment.SoftwareVersions)
    assert equipment.DeviceSerialNumber == fhir_view["device"]["identifier"][0]["value"]  # the manifest hash
    # every Observation (the top three) is a finding group with the same numbers and boxes
    regions = 0
    for obs in fhir_view["observations"]:
        (key,) = [k for k in _codes(obs) if k in by_finding]
        regions += _check_group_against_observation(by_finding.pop(key), obs)
    # any further group is a finding at or above its threshold (no positive dropped)
    for groups in by_finding.values():
        for g in groups:
            assert _value(g, "Probability") >= _value(g, "Threshold Value")
    return regions


def check_sc(sc_bytes: bytes, source: dict[str, str], fhir_view: dict[str, Any]) -> None:
    ds = pydicom.dcmread(io.BytesIO(sc_bytes))
    assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.StudyInstanceUID == source["study"]
    assert ds.SeriesInstanceUID != source["series"] and ds.BurnedInAnnotation == "YES"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source["sop"]
    assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.ndim == 3
    assert fhir_view["device"]["deviceName"][0]["name"] in str(ds.get("ImageComments", ""))


# --- the tests -------------------------------------------------------------------------------------


def test_films_routed_by_orthanc_come_back_as_sr_and_secondary_capture(tmp_path, shared_data):
    dicom_port = free_port()
    films = _films(tmp_path, shared_data, 4, ("explicit", "jpeg-lossless"), "rt")
    sources = [read_uids(f) for f in films]
    assert {s["syntax"] for s in sources} == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"}
    with orthanc(tmp_path, cxr_ae=CXR_AE, cxr_port=dicom_port) as pacs:
        env = _server_env(tmp_path, dicom_port, pacs, None)
        token = migrate_and_token(env)
        with _cxr(env, tmp_path / "server.log") as (_, base), _fhir(base, token) as fhir:
            storescu(pacs.dicom_port, "ORTHANC", films)
            _until(lambda: _all_results_in(pacs, [s["study"] for s in sources]), 180,
                   "the SR and SC of every film in Orthanc")
            verified, regions = tmp_path / "from-pacs", 0
            verified.mkdir()
            for k, source in enumerate(sources):
                found = _results(pacs, source["study"])
                assert len(found["sr"]) == len(found["sc"]) == len(found["source"]) == 1, found
                assert len(found["gsps"]) <= 1, found
                # the PACS holds the film as the modality sent it (compressed or not)
                stored = httpx.get(f"{pacs.url}/instances/{found['source'][0]}/metadata/TransferSyntax").text
                assert stored == source["syntax"]
                view = _study_in_fhir(fhir, source["study"])
                (verified / f"sr-{k}.dcm").write_bytes(pacs.file(found["sr"][0]))
                (verified / f"sc-{k}.dcm").write_bytes(pacs.file(found["sc"][0]))
                regions += check_sr((verified / f"sr-{k}.dcm").read_bytes(), source, view)
                check_sc((verified / f"sc-{k}.dcm").read_bytes(), source, view)
                assert dciodvfy_errors(verified / f"sr-{k}.dcm") == []
                assert dciodvfy_errors(verified / f"sc-{k}.dcm") == []
                for gsps in found["gsps"]:  # optional in the issue: checked when it is sent
                    (verified / f"pr-{k}.dcm").write_bytes(pacs.file(gsps))
                    pr = pydicom.dcmread(verified / f"pr-{k}.dcm")
                    assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID \
                        == source["sop"]
                    assert dciodvfy_errors(verified / f"pr-{k}.dcm") == []
            assert regions > 0  # some boxes were shown, so SCOORD regions were compared
            _loadtest_three_films(tmp_path, [films[1], *nih_films(shared_data, 8)[6:8]], pacs)


def _loadtest_three_films(tmp_path: Path, films: list[Path], pacs: Orthanc) -> None:
    """`cxr-fhir loadtest-dicom` on a DX file (JPEG lossless, sent again under fresh UIDs) and two PNGs."""
    out = tmp_path / "roundtrip.json"
    run = subprocess.run([CLI, "loadtest-dicom", "--orthanc-url", pacs.url, "--orthanc-port", str(pacs.dicom_port),
                          "--films", *map(str, films), "--count", "3", "--timeout", "120",
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["ok"] and fig["films"] == 3 and fig["failed"] == 0 and fig["duplicates"] == 0
    assert 0 < fig["sr_s"]["median"] <= fig["sr_s"]["p95"] <= fig["sr_s"]["max"] < 120
    assert fig["sc_s"]["n"] == 3 and fig["machine"]["cores"] >= 1
    assert fig["transfer_syntaxes"] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"]
    for film in fig["per_film"]:  # each film's results really are in the PACS, once
        found = _results(pacs, film["study_instance_uid"])
        assert len(found["sr"]) == len(found["sc"]) == 1, found


def _exactly_once(pacs: Orthanc, sources: list[dict[str, str]]) -> None:
    """Each study: one SR and one Secondary Capture in the PACS, nothing else. Orthanc keeps one copy
    of a SOP Instance UID however often it is sent, so what this proves is that no second object (a
    second UID for one report version) ever reached it, and none is missing."""
    stored = pacs.modalities_by_study()
    for s in sources:
        counts = stored.get(s["study"], {})
        # the SR, the SC (Modality OT) and, where the destination sends it, the GSPS (PR): one each
        assert counts.get("SR") == counts.get("OT") == 1 and set(counts) <= {"SR", "OT", "PR"}, (s["study"], counts)
        assert all(n == 1 for n in counts.values()), (s["study"], counts)
    assert len(stored) == len(sources)  # only our results are in this PACS (the films came straight to us)


@contextmanager
def _stopping(ris: MllpReceiver) -> Iterator[MllpReceiver]:
    try:
        yield ris
    finally:
        ris.stop()


def _one_message_per_study(ris: MllpReceiver, films: list[Path]) -> None:
    """The RIS got one ORU^R01 (one control id, however often it was resent) per study, each acknowledged."""
    accepted = ris.accepted()
    for f in films:
        accession = pydicom.dcmread(f, stop_before_pixels=True).AccessionNumber
        ids = {r.control_id for r in ris.received if f"|{accession}" in r.text or f"^{accession}" in r.text}
        assert len(ids) == 1 and accepted[ids.pop()] >= 1, (accession, ids)
    assert len(ris.processed()) == len(films)


def test_pacs_down_then_up_and_a_killed_server_deliver_each_object_once(tmp_path, shared_data):
    dicom_port = free_port()
    first = _films(tmp_path, shared_data, 20, ("explicit",), "down", skip=10)
    second = _films(tmp_path, shared_data, 8, ("explicit",), "kill", skip=30)
    everything = [read_uids(f) for f in first + second]
    ris = MllpReceiver()  # the RIS: down while the studies are analysed, then up
    with orthanc(tmp_path, cxr_ae=CXR_AE, cxr_port=dicom_port) as pacs, _stopping(ris):
        env = _server_env(tmp_path, dicom_port, pacs, (ris.host, ris.port))
        token = migrate_and_token(env)
        log = tmp_path / "server.log"
        pacs.stop()
        with _cxr(env, log) as (proc, base), _fhir(base, token) as fhir:
            storescu(dicom_port, CXR_AE, first)  # the modality straight to us: an allowed caller
            _until(lambda: _reports_count(fhir) == 20, 180, "20 analysed studies")
            time.sleep(2)  # the worker tries the PACS and the RIS, fails, and backs off
            pacs.start()
            ris.start()
            _until(lambda: _all_results_in(pacs, [s["study"] for s in everything[:20]]), 120,
                   "the 20 studies' SR and SC once the PACS is back", every_s=1)
            _until(lambda: len(ris.processed()) >= 20, 60, "the 20 ORU^R01 once the RIS is back")
            time.sleep(2)  # anything sent a second time would land now
            _exactly_once(pacs, everything[:20])
            _one_message_per_study(ris, first)
            # the PACS down again for 8 more studies; back up, and the server is killed while it delivers
            before = len(pacs.instances())
            pacs.stop()
            storescu(dicom_port, CXR_AE, second)
            _until(lambda: _reports_count(fhir) == 28, 120, "8 more analysed studies")
            pacs.start()
            _until(lambda: len(pacs.instances()) > before, 60, "the first delivery after the PACS came back",
                   every_s=0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        at_kill = len(pacs.instances()) - before
        assert at_kill < 2 * len(second), f"all {at_kill} objects were delivered before the kill: not mid-delivery"
        with _cxr(env, log):  # restarted on the same database: it finishes what the killed one left
            _until(lambda: _all_results_in(pacs, [s["study"] for s in everything]), 120,
                   "every SR and SC after the restart", every_s=1)
            _until(lambda: len(ris.processed()) >= 28, 60, "every ORU^R01")
            time.sleep(3)  # anything sent a second time would land now
            _exactly_once(pacs, everything)
            _one_message_per_study(ris, first + second)


def test_loadtest_dicom_without_a_pacs_says_so(tmp_path, shared_data):
    run = subprocess.run([CLI, "loadtest-dicom", "--orthanc-url", f"http://127.0.0.1:{free_port()}",
                          "--orthanc-port", str(free_port()), "--films", str(nih_films(shared_data, 1)[0])],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "PACS REST API is not reachable" in run.stderr, run.stderr
