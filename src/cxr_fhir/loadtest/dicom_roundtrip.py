"""``cxr-fhir loadtest-dicom``: the PACS round trip measured from outside, as a hospital sees it.

A modality sends chest films one by one by C-STORE to the PACS (Orthanc), whose routing rule
forwards them to a running cxr-fhir; cxr-fhir analyses each and sends its DICOM SR and Secondary
Capture back into the PACS. Per film this measures the time from the PACS's C-STORE response to
the SR (and then the Secondary Capture) being found in the PACS through Orthanc's REST API
(``/tools/find`` by StudyInstanceUID, series level). Films are sent one at a time, each only
after the previous one's results arrived, so the figure is the round trip, not queueing.

Like the rest of ``loadtest`` this imports nothing of cxr-fhir: it drives running processes with
pynetdicom (the modality's C-STORE SCU), pydicom (the films: DX files, or PNGs made into DX here)
and httpx (Orthanc's REST API; credentials, when Orthanc wants them, go in the URL's user part).
Every film gets fresh Study/Series/SOP Instance UIDs, since cxr-fhir is idempotent on them.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from .model import LoadTestError

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
FILM_SUFFIXES = {".dcm", ".dicom", ".png"}
SOURCE_MODALITIES = {"DX", "CR"}


@dataclass(frozen=True)
class RoundTripConfig:
    orthanc_url: str  # Orthanc's REST API, e.g. http://127.0.0.1:8042
    orthanc_port: int  # Orthanc's DICOM port
    films: tuple[str, ...]  # DX/CR DICOM files, PNG files, or folders of them
    count: int = 20
    orthanc_host: str = "127.0.0.1"
    orthanc_ae: str = "ORTHANC"
    calling_ae: str = "MODALITY"
    timeout_s: float = 300.0  # per film: C-STORE response to both results found
    require_sc: bool = True  # wait for the Secondary Capture too (else the SR alone ends a film)
    poll_s: float = 0.1


@dataclass
class FilmResult:
    seq: int
    source: str  # the file's name (NIH file names carry no PHI)
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax: str
    c_store_status: int | None = None
    c_store_ms: float | None = None
    sr_s: float | None = None  # C-STORE response -> SR found in the PACS
    sc_s: float | None = None  # C-STORE response -> Secondary Capture found in the PACS
    sr_count: int = 0
    sc_count: int = 0
    error: str | None = None


@dataclass
class _Found:
    sr: int = 0
    sc: int = 0
    extra: dict[str, int] = field(default_factory=dict)


# --- the films ----------------------------------------------------------------------------------


def find_films(items: tuple[str, ...] | list[str]) -> list[Path]:
    """The DICOM and PNG files given, or found directly in the folders given."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in FILM_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise LoadTestError(f"{p}: no such file or folder")
    if not paths:
        raise LoadTestError("no DICOM (.dcm) or PNG films found in " + " ".join(map(str, items)))
    return paths


def dx_from_png(png: bytes, patient_id: str, accession: str) -> Any:
    """A DX (for presentation) dataset, explicit VR little endian, of an 8- or 16-bit grey PNG."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    image = Image.open(io.BytesIO(png))
    pixels = np.asarray(image if image.mode in ("I;16", "I") else image.convert("L"))
    pixels = (pixels.astype(np.uint16) * 16) if pixels.dtype == np.uint8 else pixels.astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.ImageType, ds.PresentationIntentType = ["ORIGINAL", "PRIMARY"], "FOR PRESENTATION"
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient_id, "Loadtest^Dicom", accession
    now = datetime.now(UTC)
    ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesNumber, ds.InstanceNumber, ds.StudyID = 1, 1, accession[-16:]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def prepare(path: Path, patient_id: str, accession: str) -> Any:
    """The film as a dataset with fresh UIDs (cxr-fhir files each SOP Instance UID once)."""
    import pydicom
    from pydicom.uid import generate_uid

    if path.suffix.lower() == ".png":
        return dx_from_png(path.read_bytes(), patient_id, accession)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # a file that is no DICOM is the caller's mistake, named
        raise LoadTestError(f"{path.name}: not a DICOM file ({type(exc).__name__})") from exc
    if ds.get("Modality") not in SOURCE_MODALITIES:
        raise LoadTestError(f"{path.name}: Modality {ds.get('Modality')!r} is not DX or CR: no PACS routes it to us")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = accession
    return ds


# --- the modality and the PACS ------------------------------------------------------------------


def c_store(cfg: RoundTripConfig, ds: Any) -> int:
    """Send one dataset to the PACS as the modality; the C-STORE status (0 = success)."""
    from pynetdicom import AE

    ae = AE(ae_title=cfg.calling_ae)
    ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate(cfg.orthanc_host, cfg.orthanc_port, ae_title=cfg.orthanc_ae)
    if not assoc.is_established:
        raise LoadTestError(f"the PACS {cfg.orthanc_ae}@{cfg.orthanc_host}:{cfg.orthanc_port} refused the association")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise LoadTestError("no C-STORE response from the PACS (association aborted or timed out)")
    return int(status.Status)


def results_in_pacs(client: httpx.Client, study_uid: str) -> _Found:
    """The SR and Secondary Capture instances of a study stored in Orthanc (series level find)."""
    r = client.post("/tools/find", json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                         "Expand": True})
    r.raise_for_status()
    found = _Found()
    for series in r.json():
        modality = series.get("MainDicomTags", {}).get("Modality", "")
        n = len(series.get("Instances", []))
        if modality == "SR":
            found.sr += n
        elif modality in SOURCE_MODALITIES:
            continue
        elif modality in {"OT", "SC", "XC", "DOC"} or not modality:
            found.sc += n  # Secondary Capture modality: OT (or what the SC builder chose)
        else:
            found.extra[modality] = found.extra.get(modality, 0) + n  # e.g. PR (presentation state)
    return found


def wait_for_results(client: httpx.Client, cfg: RoundTripConfig, film: FilmResult, t0: float) -> None:
    """Poll the PACS until the film's SR (and SC) are there or the deadline passes."""
    deadline = t0 + cfg.timeout_s
    while True:
        found = results_in_pacs(client, film.study_instance_uid)
        now = time.monotonic()
        if found.sr and film.sr_s is None:
            film.sr_s = round(now - t0, 3)
        if found.sc and film.sc_s is None:
            film.sc_s = round(now - t0, 3)
        film.sr_count, film.sc_count = found.sr, found.sc
        if film.sr_s is not None and (film.sc_s is not None or not cfg.require_sc):
            return
        if now > deadline:
            missing = ["SR"] * (film.sr_s is None) + ["Secondary Capture"] * (film.sc_s is None and cfg.require_sc)
            film.error = f"{' and '.join(missing)} not in the PACS {cfg.timeout_s:.0f} s after the C-STORE"
            return
        time.sleep(cfg.poll_s)


def one_film(client: httpx.Client, cfg: RoundTripConfig, seq: int, path: Path, patient_id: str,
             run_id: str) -> FilmResult:
    ds = prepare(path, patient_id, f"RT{run_id[:8]}{seq:04d}")
    film = FilmResult(seq, path.name, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                      str(ds.file_meta.TransferSyntaxUID))
    started = time.monotonic()
    try:
        film.c_store_status = c_store(cfg, ds)
    except LoadTestError as exc:
        film.error = str(exc)
        return film
    t0 = time.monotonic()
    film.c_store_ms = round((t0 - started) * 1000, 1)
    if film.c_store_status != 0:
        film.error = f"the PACS answered C-STORE status 0x{film.c_store_status:04X}"
        return film
    wait_for_results(client, cfg, film, t0)
    return film


# --- the run and its figures ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model and cores (from /proc/cpuinfo where there is one), for the figures."""
    model, cores = platform.processor() or platform.machine(), os.cpu_count()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), model)
        cores = sum(1 for ln in info.splitlines() if ln.startswith("processor")) or cores
    except OSError:
        pass
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu_model": model, "cores": cores, "os_cpu_count": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "load_average_1_5_15_min": load}  # other work on the machine during the run


def stats(values: list[float]) -> dict[str, float] | None:
    """Median, nearest-rank p95, min, max and mean in seconds (3 decimals)."""
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return {"median": round(statistics.median(ordered), 3), "p95": round(p95, 3), "min": round(ordered[0], 3),
            "max": round(ordered[-1], 3), "mean": round(statistics.fmean(ordered), 3), "n": len(ordered)}


def check_pacs(client: httpx.Client) -> str:
    try:
        r = client.get("/system")
    except httpx.TransportError as exc:
        raise LoadTestError(f"the PACS REST API is not reachable: {type(exc).__name__}") from exc
    if r.status_code != 200:
        raise LoadTestError(f"the PACS REST API answered {r.status_code} to /system")
    return str(r.json().get("Version", "?"))


def run(cfg: RoundTripConfig, log: Any = print) -> dict[str, Any]:
    """Send ``cfg.count`` films one by one (cycling through the films given) and measure each."""
    if cfg.count < 1:
        raise LoadTestError("--count must be at least 1")
    paths = find_films(cfg.films)
    run_id = uuid.uuid4().hex
    patient_id = f"RT-{run_id[:12]}"
    films: list[FilmResult] = []
    with httpx.Client(base_url=cfg.orthanc_url.rstrip("/"), timeout=30) as client:
        version = check_pacs(client)
        started = time.monotonic()
        for seq in range(cfg.count):
            film = one_film(client, cfg, seq, paths[seq % len(paths)], patient_id, run_id)
            films.append(film)
            log(f"film {seq + 1}/{cfg.count} {film.source}: "
                + (film.error or f"SR after {film.sr_s} s" + (f", SC after {film.sc_s} s" if film.sc_s else "")))
        wall = time.monotonic() - started
    return figures(cfg, run_id, version, films, wall)


def figures(cfg: RoundTripConfig, run_id: str, version: str, films: list[FilmResult], wall: float) -> dict[str, Any]:
    failed = [f for f in films if f.error]
    out: dict[str, Any] = {
        "what": "C-STORE response from the PACS -> SR (and Secondary Capture) stored back in the PACS, per film",
        "run_id": run_id, "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pacs": {"product": "Orthanc", "version": version, "ae": cfg.orthanc_ae,
                 "dicom": f"{cfg.orthanc_host}:{cfg.orthanc_port}"},
        "films": len(films), "distinct_files": len({f.source for f in films}),
        "transfer_syntaxes": sorted({f.transfer_syntax for f in films}),
        "failed": len(failed), "errors": [f"film {f.seq}: {f.error}" for f in failed[:20]],
        "duplicates": sum(1 for f in films if f.sr_count > 1 or f.sc_count > 1),
        "sr_s": stats([f.sr_s for f in films if f.sr_s is not None]),
        "sc_s": stats([f.sc_s for f in films if f.sc_s is not None]),
        "c_store_ms": stats([f.c_store_ms for f in films if f.c_store_ms is not None]),
        "wall_s": round(wall, 2), "machine": machine(), "per_film": [asdict(f) for f in films],
    }
    out["ok"] = not failed and not out["duplicates"]
    return out


def summary(fig: dict[str, Any]) -> str:
    sr, sc = fig["sr_s"] or {}, fig["sc_s"] or {}
    lines = [f"{fig['films']} films through {fig['pacs']['product']} {fig['pacs']['version']}: {fig['failed']} failed, "
             f"{fig['duplicates']} with a result stored twice, wall {fig['wall_s']} s",
             f"C-STORE -> SR in the PACS (s): median {sr.get('median')} p95 {sr.get('p95')} max {sr.get('max')}",
             f"C-STORE -> Secondary Capture in the PACS (s): median {sc.get('median')} p95 {sc.get('p95')} "
             f"max {sc.get('max')}",
             f"machine: {fig['machine']['cpu_model']}, {fig['machine']['cores']} cores",
             *fig["errors"], "OK" if fig["ok"] else "FAILED"]
    return "\n".join(lines)

