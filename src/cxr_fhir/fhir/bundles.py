"""The transaction Bundle that pushes one report to the EHR.

Every entry is conditional on a business identifier, so sending the same Bundle twice (a retry
after a timeout) creates nothing new: Patient is created only if no patient has the MRN (the EHR
owns demographics) and ImagingStudy only if none has the Study Instance UID (the PACS may own it);
Device, Observations and DiagnosticReport are conditional updates on their identifiers, so an
amended report replaces the earlier version instead of adding one. The
Device (the model that made the findings) travels along, so no reference dangles in the EHR.
References between entries use urn:uuid full URLs, which the EHR resolves.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle

from ..records.tables import Analysis, Patient, Report, Study
from . import mapping


def _escape(text: str) -> str:
    """FHIR search escaping: a bare ',' would mean OR and '|' would split system from value."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _token(identifier: dict[str, Any]) -> str:
    return quote(f"{_escape(identifier['system'])}|{_escape(identifier['value'])}", safe="")


def _portable(resource: Any) -> dict[str, Any]:
    """Our resource without our logical id and version (the EHR assigns its own)."""
    wire = mapping.to_wire(resource)
    wire.pop("id", None)
    meta = {k: v for k, v in wire.pop("meta", {}).items() if k in ("security", "profile")}
    if meta:
        wire["meta"] = meta
    return wire


def ehr_transaction(patient: Patient, study: Study, analysis: Analysis, report: Report,
                    overlay_png: bytes | None = None) -> Bundle:
    urls = {key: f"urn:uuid:{uuid.uuid4()}" for key in ("patient", "study", "device", "report")}
    model = mapping.device(mapping.model_of(analysis))
    observations = mapping.observations(analysis, study, report)
    obs_urls = {o.id: f"urn:uuid:{uuid.uuid4()}" for o in observations}
    local = {f"Patient/{patient.id}": urls["patient"], f"ImagingStudy/{study.id}": urls["study"],
             f"Device/{model.id}": urls["device"],
             **{f"Observation/{oid}": url for oid, url in obs_urls.items()}}

    def relink(wire: Any) -> Any:
        """Point references at the bundle's own entries (the EHR knows none of our ids)."""
        if isinstance(wire, dict):
            return {k: (local.get(v, v) if k == "reference" else relink(v)) for k, v in wire.items()}
        if isinstance(wire, list):
            return [relink(v) for v in wire]
        return wire

    entries: list[dict[str, Any]] = []
    pt = _portable(mapping.patient(patient))
    entries.append({"fullUrl": urls["patient"], "resource": pt,
                    "request": {"method": "POST", "url": "Patient",
                                "ifNoneExist": f"identifier={_token(pt['identifier'][0])}"}})
    st = relink(_portable(mapping.imaging_study(study)))
    # The PACS may already have filed this study under its UID: refer to that one, never overwrite it.
    entries.append({"fullUrl": urls["study"], "resource": st,
                    "request": {"method": "POST", "url": "ImagingStudy",
                                "ifNoneExist": f"identifier={_token(st['identifier'][0])}"}})
    dv = _portable(model)
    entries.append({"fullUrl": urls["device"], "resource": dv,
                    "request": {"method": "PUT", "url": f"Device?identifier={_token(dv['identifier'][0])}"}})
    for o in observations:
        ow = relink(_portable(o))
        entries.append({"fullUrl": obs_urls[o.id], "resource": ow,
                        "request": {"method": "PUT", "url": f"Observation?identifier={_token(ow['identifier'][0])}"}})
    dr = relink(_portable(mapping.diagnostic_report(report, analysis, study, observations, overlay_png)))
    entries.append({"fullUrl": urls["report"], "resource": dr,
                    "request": {"method": "PUT", "url": f"DiagnosticReport?identifier={_token(dr['identifier'][0])}"}})
    # Validated from plain JSON (the model's constructor is typed for BundleEntry objects).
    return Bundle.model_validate({"type": "transaction", "entry": entries})
