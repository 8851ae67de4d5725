"""The HTTP side of a run: registering patients, sending one upload (503s honoured), searching."""

from __future__ import annotations

import time
from typing import Any

import httpx

from .model import FHIR_JSON, MRN_SYSTEM, LoadTestError, Upload


def register_patients(client: httpx.Client, run_id: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        body = {"resourceType": "Patient",
                "identifier": [{"system": MRN_SYSTEM, "value": f"LT-{run_id}-{i:04d}"}],
                "name": [{"family": "Loadtest", "given": [f"P{i:04d}"]}], "gender": "unknown"}
        r = client.post("/Patient", json=body, headers={"Content-Type": FHIR_JSON,
                                                         "Prefer": "return=representation"})
        if r.status_code in (401, 403):
            raise LoadTestError(f"the server refused the token ({r.status_code}): {diagnostics(r)}")
        if r.status_code != 201:
            raise LoadTestError(f"registering a patient failed ({r.status_code}): {diagnostics(r)}")
        ids.append(r.json()["id"])
    return ids


def send(client: httpx.Client, up: Upload, data: bytes, max_retries: int) -> None:
    """POSTs the upload to $analyze until it is answered other than 503 (or the retries run out),
    and records the answer on ``up``."""
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
        if r.status_code == 503 and up.retries_503 < max_retries:
            up.retries_503 += 1
            up.reasons_503.append(reason_503(r))
            time.sleep(retry_after(r))
            continue
        up.request_ms = (time.perf_counter() - start) * 1000
        if r.status_code == 200:
            accepted(up, r)
        else:
            up.error = f"{r.status_code}: {diagnostics(r)}"[:300]
        break
    up.latency_ms = (time.perf_counter() - first) * 1000


def accepted(up: Upload, r: httpx.Response) -> None:
    """What a 200 from $analyze says was made: the study, its report and the report's results."""
    try:
        entries = [e["resource"] for e in r.json().get("entry", [])]
        up.study_id = next(e["id"] for e in entries if e["resourceType"] == "ImagingStudy")
        up.report_id = next(e["id"] for e in entries if e["resourceType"] == "DiagnosticReport")
        up.observation_ids = [e["id"] for e in entries if e["resourceType"] == "Observation"]
    except (ValueError, KeyError, StopIteration, TypeError):
        up.error = "200 with a Bundle that lacks the ImagingStudy or DiagnosticReport"
    up.server_timings_ms = parse_server_timing(r.headers.get("server-timing"))


def search(client: httpx.Client, rtype: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every match of a search, following the Bundle's next links."""
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


def reason_503(r: httpx.Response) -> str:
    """The kind of 503: the queue was full, or something else (named by its diagnostics)."""
    text = diagnostics(r)
    return "queue full" if "queue is full" in text else text[:80]


def retry_after(r: httpx.Response) -> float:
    try:
        return min(60.0, max(0.0, float(r.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def diagnostics(r: httpx.Response) -> str:
    try:
        return "; ".join(i.get("diagnostics", "") for i in r.json().get("issue", [])) or r.text[:200]
    except ValueError:
        return r.text[:200]
