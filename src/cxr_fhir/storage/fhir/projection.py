"""Keep the FHIR store in step with our own rows, inside the caller's transaction.

Services call these right after they change a patient, study or report, so the API never shows
a state the database does not hold. Versions follow the rows' own versions where they have one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, exists, select
from sqlmodel import Session, col

from ...domain.errors import NotFound
from ...domain.vocabulary import Origin
from ...fhir import mapping
from ...fhir.search_params import PARAMS
from ...records.tables import Analysis, AuditEvent, FhirResource, Patient, Report, Study, VersionedFields
from . import store
from .index import reference_key, walk

log = logging.getLogger("cxr_fhir.fhir")

_PATIENT_OWNED = ("identifier", "name", "gender", "birthDate", "active")

_V = TypeVar("_V", bound=VersionedFields)


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
    assert device.id is not None  # mapping.device always names the Device
    if store.get_row(s, "Device", device.id) is None:
        store.put(s, "Device", device.id, mapping.to_wire(device), origin="domain")
    observations = mapping.observations(analysis, study_row, report)
    for obs in observations:
        wire = mapping.to_wire(obs)
        wire.pop("meta", None)
        wire["meta"] = {"security": [mapping.AI_ASSISTED]}
        assert obs.id is not None  # mapping.observations always names each Observation
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
    if analysis is None:
        raise NotFound(f"analysis {row.analysis_id} of report {row.id} is not known")
    study_row = s.get(Study, row.study_id)
    if study_row is None:
        raise NotFound(f"study {row.study_id} of report {row.id} is not known")
    results(s, study_row, analysis, row)


def deleted(s: Session, resource_type: str, resource_id: str, version: int, when: datetime | None) -> None:
    store.mark_deleted(s, resource_type, resource_id, version=version, when=when)


def backfill(s: Session) -> dict[str, int]:
    """Project the rows that have no FHIR resource yet (data stored before the FHIR store
    existed); rows already projected are left alone, so running it again changes nothing."""
    def missing(model: type[_V], resource_type: str) -> Sequence[_V]:
        return s.execute(select(model).where(~exists(select(col(FhirResource.id)).where(and_(
            col(FhirResource.resource_type) == resource_type, col(FhirResource.id) == col(model.id))))
        )).scalars().all()

    counts = {"Patient": 0, "ImagingStudy": 0, "DiagnosticReport": 0}
    for patient_row in missing(Patient, "Patient"):
        patient(s, patient_row)
        if patient_row.deleted_at is not None:
            store.mark_deleted(s, "Patient", patient_row.id)
        counts["Patient"] += 1
    for study_row in missing(Study, "ImagingStudy"):
        if study_row.deleted_at is None:
            study(s, study_row)
        counts["ImagingStudy"] += 1
    for report_row in missing(Report, "DiagnosticReport"):
        report(s, report_row)
        counts["DiagnosticReport"] += 1
    return counts


# -- the audit trail ------------------------------------------------------------------------------

def _patient_of(s: Session, entity_type: str | None, entity_id: str | None) -> str | None:
    """The id of the Patient an event is about: the entity itself, or the patient of the resource
    acted on (one lookup by primary key, usually of a row the session already holds)."""
    if not entity_type or not entity_id or not store.is_id(entity_id):
        return None
    if entity_type == "Patient":
        return entity_id
    param = PARAMS.get(entity_type, {}).get("patient") if entity_type != "AuditEvent" else None
    if param is None:
        return None
    row = store.get_row(s, entity_type, entity_id)
    if row is None:
        return None
    for path in param.paths:
        for value in walk(row.content, path):
            ref = value.get("reference") if isinstance(value, dict) else None
            rtype, _, rid = reference_key(ref).partition("/") if isinstance(ref, str) else ("", "", "")
            if rtype == "Patient" and store.is_id(rid):
                return rid
    return None


def audit_event(s: Session, row: AuditEvent) -> dict[str, Any]:
    """The FHIR AuditEvent of an audit row, added to the session beside it (the one version it will
    ever have), so the audit trail is searched as every other type is."""
    patient_id = _patient_of(s, row.entity_type, row.entity_id)
    try:
        content = mapping.to_wire(mapping.audit_event(row, patient=patient_id))
    except ValueError:
        # Whatever a malformed request left in the row, the event is served: without the parts the
        # R4 model refuses (they stay in the audit row itself).
        log.warning("audit event %s projected without its entity", row.id)
        bare = AuditEvent(**{**row.model_dump(), "entity_type": None, "entity_id": None, "query": None,
                             "detail": None})
        content = mapping.to_wire(mapping.audit_event(bare))
    return store.insert(s, "AuditEvent", row.id, content, origin=Origin.DOMAIN, when=row.recorded)


def backfill_audit_events(s: Session, batch: int = 500) -> int:
    """Project the audit rows that have no FHIR AuditEvent yet (recorded before the audit trail was
    searched through the FHIR store); a batch at a time, so a long trail does not fill memory."""
    done = 0
    while True:
        found = s.execute(select(AuditEvent).where(~exists(select(col(FhirResource.id)).where(and_(
            col(FhirResource.resource_type) == "AuditEvent", col(FhirResource.id) == col(AuditEvent.id)))))
            .order_by(col(AuditEvent.recorded), col(AuditEvent.id)).limit(batch)).scalars().all()
        for row in found:
            audit_event(s, row)
        s.flush()
        s.expunge_all()
        done += len(found)
        if len(found) < batch:
            return done
