"""``cxr-fhir loadtest``: many uploads from concurrent clients against a running server, then proof,
through the FHIR API only, that every accepted upload is stored exactly once and intact.

Each upload carries a unique marker inside the image file (a PNG ``tEXt`` chunk or a JPEG comment:
the pixels are untouched), so its bytes, and therefore their SHA-256, identify that one upload.
The server files images by SHA-256 (``Media.content.url`` is ``Binary/<sha256>``), so a study can be
traced back to the upload that made it, and its stored bytes can be hashed against what was sent.

A 503 is honoured (wait ``Retry-After``, send again, counted); anything else that is not a 200 is an
error with its status. A transport error on the POST is not retried: the client cannot know whether
the server stored the study, and the verification then shows whether it did (``orphaned``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
import struct
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"
MRN_SYSTEM = "urn:cxr-fhir:loadtest:mrn"
MARKER_KEY = b"cxr-loadtest"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class LoadTestError(Exception):
    """The run cannot start (bad arguments, server refusing the token, no images)."""


# -- unique markers inside the image file ---------------------------------------------------------

def mark_png(data: bytes, marker: str) -> bytes:
    """The PNG with a ``tEXt`` chunk ``cxr-loadtest=<marker>`` right after IHDR (pixels unchanged)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise LoadTestError("not a PNG file")
    ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
    body = b"tEXt" + MARKER_KEY + b"\x00" + marker.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def mark_jpeg(data: bytes, marker: str) -> bytes:
    """The JPEG with a COM segment holding the marker right after SOI (pixels unchanged)."""
    if data[:2] != b"\xff\xd8":
        raise LoadTestError("not a JPEG file")
    text = MARKER_KEY + b"=" + marker.encode("latin-1")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def mark(data: bytes, media_type: str, marker: str) -> bytes:
    return mark_png(data, marker) if media_type == "image/png" else mark_jpeg(data, marker)


def find_images(items: list[str]) -> list[tuple[str, str, bytes]]:
    """(name, media type, bytes) for each PNG/JPEG file given, or found directly in a folder given."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise LoadTestError(f"{p}: only PNG and JPEG files can carry a marker")
            paths.append(p)
        else:
            raise LoadTestError(f"{p}: no such file or folder")
    if not paths:
        raise LoadTestError("no PNG or JPEG images found in " + " ".join(items))
    return [(p.name, IMAGE_SUFFIXES[p.suffix.lower()], p.read_bytes()) for p in paths]


# -- figures --------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p90/p99, max and mean, rounded to 0.1."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))], 1)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(ordered[-1], 1),
            "mean": round(statistics.fmean(ordered), 1), "n": len(ordered)}


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing: classify;dur=38.1, detect;dur=27.0`` -> {"classify_ms": 38.1, ...}."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for param in params:
            if name and param.startswith("dur="):
                try:
                    out[f"{name}_ms"] = float(param[4:])
                except ValueError:
                    pass
    return out


# -- the run --------------------------------------------------------------------------------------

@dataclass
class Upload:
    seq: int
    patient_id: str
    image: str
    media_type: str
    sha256: str
    status: int | None = None  # the final HTTP status (200 = accepted); None = no answer
    error: str | None = None
    retries_503: int = 0
    reasons_503: list[str] = field(default_factory=list)  # the server's diagnostics, one per 503
    latency_ms: float | None = None  # first send to final answer, 503 waits included
    request_ms: float | None = None  # the final request alone
    study_id: str | None = None
    report_id: str | None = None
    observation_ids: list[str] = field(default_factory=list)
    server_timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Config:
    url: str
    token: str
    images: list[str]
    uploads: int = 500
    clients: int = 8
    patients: int = 20
    timeout_s: float = 120.0
    max_retries: int = 200


def fhir_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/fhir") else url + "/fhir"


class LoadTest:
    def __init__(self, cfg: Config, log=print):
        if cfg.uploads < 1 or cfg.clients < 1 or cfg.patients < 1:
            raise LoadTestError("--uploads, --clients and --patients must be at least 1")
        self.cfg, self.log = cfg, log
        self.base = fhir_base(cfg.url)
        self.run_id = uuid.uuid4().hex[:12]
        self.images = find_images(cfg.images)
        self.headers = {"Authorization": f"Bearer {cfg.token}", "Accept": FHIR_JSON}

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=self.cfg.timeout_s)

    # -- 1. patients --------------------------------------------------------------------------------

    def register_patients(self, client: httpx.Client) -> list[str]:
        ids = []
        for i in range(self.cfg.patients):
            body = {"resourceType": "Patient",
                    "identifier": [{"system": MRN_SYSTEM, "value": f"LT-{self.run_id}-{i:04d}"}],
                    "name": [{"family": "Loadtest", "given": [f"P{i:04d}"]}], "gender": "unknown"}
            r = client.post("/Patient", json=body, headers={"Content-Type": FHIR_JSON,
                                                             "Prefer": "return=representation"})
            if r.status_code in (401, 403):
                raise LoadTestError(f"the server refused the token ({r.status_code}): {_diagnostics(r)}")
            if r.status_code != 201:
                raise LoadTestError(f"registering a patient failed ({r.status_code}): {_diagnostics(r)}")
            ids.append(r.json()["id"])
        return ids

    # -- 2. uploads ---------------------------------------------------------------------------------

    def plan(self, patients: list[str]) -> list[tuple[Upload, bytes]]:
        """Upload i goes to patient i mod P with image i mod I, marked with run id and i."""
        out = []
        for seq in range(self.cfg.uploads):
            name, mtype, data = self.images[seq % len(self.images)]
            marked = mark(data, mtype, f"{self.run_id}:{seq}")
            out.append((Upload(seq, patients[seq % len(patients)], name, mtype,
                               hashlib.sha256(marked).hexdigest()), marked))
        return out

    def _send(self, client: httpx.Client, up: Upload, data: bytes) -> None:
        headers = {"Content-Type": up.media_type}
        first = time.perf_counter()
        while True:
            start = time.perf_counter()
            try:
                r = client.post("/ImagingStudy/$analyze", params={"subject": f"Patient/{up.patient_id}"},
                                content=data, headers=headers)
            except httpx.TransportError as exc:
                up.error = f"transport: {type(exc).__name__}: {exc}"[:300]
                break
            up.status = r.status_code
            if r.status_code == 503 and up.retries_503 < self.cfg.max_retries:
                up.retries_503 += 1
                up.reasons_503.append(_reason_503(r))
                time.sleep(_retry_after(r))
                continue
            up.request_ms = (time.perf_counter() - start) * 1000
            if r.status_code == 200:
                self._accepted(up, r)
            else:
                up.error = f"{r.status_code}: {_diagnostics(r)}"[:300]
            break
        up.latency_ms = (time.perf_counter() - first) * 1000

    @staticmethod
    def _accepted(up: Upload, r: httpx.Response) -> None:
        try:
            entries = [e["resource"] for e in r.json().get("entry", [])]
            up.study_id = next(e["id"] for e in entries if e["resourceType"] == "ImagingStudy")
            up.report_id = next(e["id"] for e in entries if e["resourceType"] == "DiagnosticReport")
            up.observation_ids = [e["id"] for e in entries if e["resourceType"] == "Observation"]
        except (ValueError, KeyError, StopIteration, TypeError):
            up.error = "200 with a Bundle that lacks the ImagingStudy or DiagnosticReport"
        up.server_timings_ms = parse_server_timing(r.headers.get("server-timing"))

    def upload_all(self, work: list[tuple[Upload, bytes]]) -> float:
        """C threads, each with its own keep-alive connection, take uploads in order; wall seconds."""
        order = iter(work)
        lock = threading.Lock()
        done = itertools.count(1)
        step = max(1, len(work) // 10)

        def client_loop() -> None:
            with self._client() as client:
                while True:
                    with lock:
                        item = next(order, None)
                    if item is None:
                        return
                    self._send(client, *item)
                    n = next(done)
                    if n % step == 0:
                        self.log(f"  {n}/{len(work)} uploads answered")

        start = time.perf_counter()
        threads = [threading.Thread(target=client_loop, name=f"loadtest-{i}") for i in range(self.cfg.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    # -- 3. verification, through the FHIR API only --------------------------------------------------

    def _search(self, client: httpx.Client, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
        out, r = [], client.get(f"/{rtype}", params={**params, "_count": "500"})
        while True:
            r.raise_for_status()
            bundle = r.json()
            out += [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match")
                    == "match"]
            nxt = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            if not nxt:
                return out
            r = client.get(nxt)

    def verify(self, uploads: list[Upload], patients: list[str]) -> dict[str, Any]:
        by_sha = {u.sha256: u for u in uploads}
        accepted = [u for u in uploads if u.status == 200 and u.study_id]
        found: dict[str, dict[str, list[dict[str, Any]]]] = {}

        def per_patient(pid: str) -> tuple[str, dict[str, list[dict[str, Any]]]]:
            with self._client() as client:
                return pid, {rtype: self._search(client, rtype, {"patient": pid})
                             for rtype in ("ImagingStudy", "Media", "DiagnosticReport", "Observation")}

        with ThreadPoolExecutor(self.cfg.clients) as pool:
            found = dict(pool.map(per_patient, patients))

        figures: dict[str, Any] = {"lost": 0, "duplicated": 0, "orphaned": 0, "foreign": 0, "corrupted": 0,
                                   "incomplete": 0, "count_mismatch_patients": 0}
        problems: list[str] = []
        expected_per_patient = Counter(u.patient_id for u in accepted)
        media_by_study: dict[str, dict[str, Any]] = {}
        for pid, res in found.items():
            studies = {s["id"] for s in res["ImagingStudy"]}
            media_by_study.update({m["id"]: m for m in res["Media"]})
            if len(res["ImagingStudy"]) != expected_per_patient[pid]:
                figures["count_mismatch_patients"] += 1
                problems.append(f"Patient/{pid}: {len(res['ImagingStudy'])} studies found, "
                                f"{expected_per_patient[pid]} uploads accepted")
            expected = {u.study_id for u in accepted if u.patient_id == pid}
            for sid in sorted(studies - expected):  # a study nobody was told about
                sha = media_by_study.get(sid, {}).get("content", {}).get("url", "").removeprefix("Binary/")
                owner = by_sha.get(sha)
                if owner is not None and owner.status == 200:
                    figures["duplicated"] += 1
                    problems.append(f"ImagingStudy/{sid}: a second study for upload {owner.seq} "
                                    f"(accepted as ImagingStudy/{owner.study_id})")
                elif owner is not None:
                    figures["orphaned"] += 1
                    problems.append(f"ImagingStudy/{sid}: stored for upload {owner.seq}, which the client saw "
                                    f"fail ({owner.error})")
                else:
                    figures["foreign"] += 1
                    problems.append(f"ImagingStudy/{sid}: not from this run")

        reports = {pid: res["DiagnosticReport"] for pid, res in found.items()}
        observations = {o["id"]: o for res in found.values() for o in res["Observation"]}
        to_hash: list[Upload] = []
        for u in accepted:
            res = found[u.patient_id]
            if u.study_id not in {s["id"] for s in res["ImagingStudy"]}:
                figures["lost"] += 1
                problems.append(f"upload {u.seq}: ImagingStudy/{u.study_id} was accepted but is not found")
                continue
            study_ref = f"ImagingStudy/{u.study_id}"
            drs = [d for d in reports[u.patient_id]
                   if study_ref in [x.get("reference") for x in d.get("imagingStudy", [])]]
            result_ids = [r["reference"].removeprefix("Observation/") for r in drs[0].get("result", [])] if drs else []
            complete = (len(drs) == 1 and drs[0]["id"] == u.report_id and len(result_ids) == 3
                        and sorted(result_ids) == sorted(u.observation_ids)
                        and all(rid in observations
                                and study_ref in [x.get("reference") for x in observations[rid].get("partOf", [])]
                                and observations[rid].get("subject", {}).get("reference") == f"Patient/{u.patient_id}"
                                for rid in result_ids))
            if not complete:
                figures["incomplete"] += 1
                problems.append(f"upload {u.seq}: {study_ref} has {len(drs)} DiagnosticReport(s) and "
                                f"{len(result_ids)} result Observation(s), expected 1 and 3 referencing it")
            media = media_by_study.get(u.study_id)
            url = (media or {}).get("content", {}).get("url", "")
            if media is None or url != f"Binary/{u.sha256}" \
                    or media.get("partOf", [{}])[0].get("reference") != study_ref:
                figures["corrupted"] += 1
                problems.append(f"upload {u.seq}: Media for {study_ref} points at {url or 'nothing'}, "
                                f"expected Binary/{u.sha256}")
                continue
            to_hash.append(u)

        def stored_sha(u: Upload) -> tuple[Upload, str | None]:
            with self._client() as client:
                r = client.get(f"/Binary/{u.sha256}", headers={"Accept": "image/*"})
                return u, hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else None

        intact = 0
        with ThreadPoolExecutor(self.cfg.clients) as pool:
            for u, sha in pool.map(stored_sha, to_hash):
                if sha == u.sha256:
                    intact += 1
                    continue
                figures["corrupted"] += 1
                problems.append(f"upload {u.seq}: stored bytes hash to {sha or '(not readable)'}, "
                                f"sent {u.sha256}")
        figures["verified_intact"] = intact
        figures["studies_found"] = sum(len(res["ImagingStudy"]) for res in found.values())
        figures["problems"] = problems[:50]
        return figures

    # -- all of it ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.log(f"load test {self.run_id}: {cfg.uploads} uploads, {cfg.clients} clients, {cfg.patients} patients, "
                 f"{len(self.images)} images, against {self.base}")
        t0 = time.perf_counter()
        with self._client() as client:
            patients = self.register_patients(client)
        register_s = time.perf_counter() - t0
        work = self.plan(patients)
        self.log(f"registered {len(patients)} patients in {register_s:.1f} s; uploading")
        wall_s = self.upload_all(work)
        uploads = [u for u, _ in work]
        self.log(f"uploads done in {wall_s:.1f} s; verifying through the FHIR API")
        t1 = time.perf_counter()
        checks = self.verify(uploads, patients)
        verify_s = time.perf_counter() - t1

        succeeded = [u for u in uploads if u.status == 200 and u.study_id]
        errors = [u for u in uploads if not (u.status == 200 and u.study_id)]
        server: dict[str, list[float]] = defaultdict(list)
        for u in succeeded:
            for k, v in u.server_timings_ms.items():
                server[k].append(v)
        figures: dict[str, Any] = {
            "run_id": self.run_id, "url": self.base, "uploads": cfg.uploads, "clients": cfg.clients,
            "patients": cfg.patients, "images": len(self.images),
            "image_bytes_mean": round(statistics.fmean(len(d) for _, _, d in self.images)),
            "attempted": len(uploads), "succeeded": len(succeeded),
            "retries_503": sum(u.retries_503 for u in uploads),
            "uploads_retried": sum(1 for u in uploads if u.retries_503),
            "retries_503_by_reason": dict(Counter(x for u in uploads for x in u.reasons_503)),
            "errors": len(errors),
            "errors_by_status": dict(Counter(str(u.status) if u.status else "transport" for u in errors)),
            "error_examples": [f"upload {u.seq}: {u.error}" for u in errors[:10]],
            **{k: v for k, v in checks.items() if k != "problems"},
            "wall_s": round(wall_s, 2),
            "throughput_per_s": round(len(succeeded) / wall_s, 2) if wall_s else None,
            "latency_ms": percentiles([u.latency_ms for u in succeeded if u.latency_ms is not None]),
            "accepted_request_ms": percentiles([u.request_ms for u in succeeded if u.request_ms is not None]),
            "server_timings_ms": {k: percentiles(v) for k, v in sorted(server.items())} or None,
            "register_s": round(register_s, 2), "verify_s": round(verify_s, 2),
            "problems": checks["problems"],
        }
        figures["ok"] = not any(figures[k] for k in ("errors", "lost", "duplicated", "orphaned", "foreign",
                                                     "corrupted", "incomplete", "count_mismatch_patients"))
        return figures


def _reason_503(r: httpx.Response) -> str:
    """The kind of 503: the queue was full, or something else (named by its diagnostics)."""
    text = _diagnostics(r)
    return "queue full" if "queue is full" in text else text[:80]


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(60.0, max(0.0, float(r.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def _diagnostics(r: httpx.Response) -> str:
    try:
        return "; ".join(i.get("diagnostics", "") for i in r.json().get("issue", [])) or r.text[:200]
    except ValueError:
        return r.text[:200]


def summary(fig: dict[str, Any]) -> str:
    lat, req = fig["latency_ms"] or {}, fig["accepted_request_ms"] or {}
    lines = [
        f"uploads: {fig['attempted']} attempted, {fig['succeeded']} succeeded, {fig['errors']} errors "
        f"{fig['errors_by_status'] or ''}, {fig['retries_503']} retries after 503 ({fig['uploads_retried']} uploads; "
        f"{fig['retries_503_by_reason'] or 'none'})",
        f"verified: {fig['studies_found']} studies found; lost {fig['lost']}, duplicated {fig['duplicated']}, "
        f"orphaned {fig['orphaned']}, foreign {fig['foreign']}, corrupted {fig['corrupted']}, "
        f"incomplete {fig['incomplete']}, patients with a count mismatch {fig['count_mismatch_patients']}; "
        f"{fig['verified_intact']} images hashed intact",
        f"wall {fig['wall_s']} s, throughput {fig['throughput_per_s']} uploads/s",
        f"latency per upload (ms, 503 waits included): p50 {lat.get('p50')} p90 {lat.get('p90')} "
        f"p99 {lat.get('p99')} max {lat.get('max')}",
        f"accepted request alone (ms): p50 {req.get('p50')} p90 {req.get('p90')} p99 {req.get('p99')} "
        f"max {req.get('max')}",
    ]
    if fig["server_timings_ms"]:
        lines.append("server (Server-Timing, ms p50/p90/max): " + ", ".join(
            f"{k.removesuffix('_ms')} {v['p50']}/{v['p90']}/{v['max']}" for k, v in fig["server_timings_ms"].items()))
    lines += fig["error_examples"] + fig["problems"][:20]
    lines.append("OK" if fig["ok"] else "FAILED")
    return "\n".join(lines)


def write_json(fig: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(fig, indent=1) + "\n")
