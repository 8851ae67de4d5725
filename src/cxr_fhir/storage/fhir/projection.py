"""Keep the FHIR store in step with our own rows, inside the caller's transaction.

Services call these right after they change a patient, study or report, so the API never shows
a state the database does not hold. Versions follow the rows' own versions where they have one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, select
from sqlmodel import Session

from ..tables import Analysis, FhirResource, Patient, Report, Study
from . import store
from ...fhir import mapping

_PATIENT_OWNED = ("identifier", "name", "gender", "birthDate", "active")


def patient(s: Session, row: Patient, posted: dict[str, Any] | None = None) -> dict[str, Any]:
    """``posted``: the Patient as a FHIR client sent it, stored as sent (nothing the client said
    is dropped); otherwise our columns replace the elements they own and the rest is kept."""
    mapped = mapping.to_wire(mapping.patient(row))
    if posted is not None:
        content = {k: v for k, v in posted.items() if k not in ("id", "meta")}
    else:
        previous = store.get_row(s, "Patient", row.id)
        content = {k: v for k, v in (previous.content if previous else {}).items()
                   if k not in (*_PATIENT_OWNED, "id", "meta")}
        content.update({k: v for k, v in mapped.items() if k not in ("id", "meta")})
        if previous:
            # Identifiers and names we do not model (a passport number, an alias) stay.
            systems = {i.get("system") for i in mapped["identifier"]}
            extra_ids = [i for i in previous.content.get("identifier", []) if i.get("system") not in systems
                         and not (i.get("type", {}).get("coding", [{}])[0].get("code") == "MR")]
            content["identifier"] = mapped["identifier"] + extra_ids
            content["name"] = mapped["name"] + previous.content.get("name", [])[1:]
    return store.put(s, "Patient", row.id, content, origin="domain", version=row.version_id, when=row.updated_at)


def study(s: Session, row: Study) -> None:
    """The ImagingStudy and the Media holding the image."""
    if row.deleted_at is not None:
        store.mark_deleted(s, "ImagingStudy", row.id, version=row.version_id, when=row.updated_at)
        store.mark_deleted(s, "Media", row.id)
        return
    store.put(s, "ImagingStudy", row.id, mapping.to_wire(mapping.imaging_study(row)), origin="domain",
              version=row.version_id, when=row.updated_at)
    if store.get_row(s, "Media", row.id) is None:
        store.put(s, "Media", row.id, mapping.media(row), origin="domain")


def results(s: Session, study_row: Study, analysis: Analysis, report: Report) -> None:
    """Device, Observations, DiagnosticReport and Provenance of one analysed study."""
    device = mapping.device(mapping.model_of(analysis))
    if store.get_row(s, "Device", device.id) is None:
        store.put(s, "Device", device.id, mapping.to_wire(device), origin="domain")
    observations = mapping.observations(analysis, study_row, report)
    for obs in observations:
        wire = mapping.to_wire(obs)
        wire.pop("meta", None)
        wire["meta"] = {"security": [mapping.AI_ASSISTED]}
        store.put(s, "Observation", obs.id, wire, origin="domain", when=report.updated_at)
    top = analysis.top3[0]["finding"] if analysis.top3 else None
    overlay = f"Binary/{analysis.overlays[top]}" if top and top in analysis.overlays else None
    dr = mapping.to_wire(mapping.diagnostic_report(report, analysis, study_row, observations, overlay_url=overlay))
    store.put(s, "DiagnosticReport", report.id, dr, origin="domain", version=report.version_id,
              when=report.updated_at)
    store.put(s, "Provenance", report.id, mapping.provenance(report, analysis, observations), origin="domain",
              when=report.updated_at)


def report(s: Session, row: Report) -> None:
    """After a report changed (confirmed, amended, cancelled)."""
    analysis = s.get(Analysis, row.analysis_id)
    study_row = s.get(Study, row.study_id)
    results(s, study_row, analysis, row)


def deleted(s: Session, resource_type: str, resource_id: str, version: int, when) -> None:
    store.mark_deleted(s, resource_type, resource_id, version=version, when=when)


def backfill(s: Session) -> dict[str, int]:
    """Project the rows that have no FHIR resource yet (data stored before the FHIR store
    existed); rows already projected are left alone, so running it again changes nothing."""
    def missing(model, resource_type: str):
        return s.execute(select(model).where(~exists(select(FhirResource.id).where(and_(
            FhirResource.resource_type == resource_type, FhirResource.id == model.id))))).scalars().all()

    counts = {"Patient": 0, "ImagingStudy": 0, "DiagnosticReport": 0}
    for row in missing(Patient, "Patient"):
        patient(s, row)
        if row.deleted_at is not None:
            store.mark_deleted(s, "Patient", row.id)
        counts["Patient"] += 1
    for row in missing(Study, "ImagingStudy"):
        if row.deleted_at is None:
            study(s, row)
        counts["ImagingStudy"] += 1
    for row in missing(Report, "DiagnosticReport"):
        report(s, row)
        counts["DiagnosticReport"] += 1
    return counts
