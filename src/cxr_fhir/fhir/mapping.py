"""Domain rows -> FHIR R4 resources (fhir.resources.R4B models). Pure: no HTTP, no models, no I/O.

The resources are serialised with ``to_wire``, which never emits empty fields or nulls.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient as FhirPatient

from ..domain.findings import BY_NAME, LOCAL_SYSTEM, SNOMED
from ..domain.report import UNUSUAL_FILM
from ..records.tables import Analysis, AuditEvent, Patient, Report, Study

DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
AI_ASSISTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST",
               "display": "Artificial Intelligence asserted"}
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent"}
COMPONENT_SYSTEM = "urn:cxr-fhir:component"
REPORT_ID_SYSTEM = "urn:cxr-fhir:report"
OBSERVATION_ID_SYSTEM = "urn:cxr-fhir:observation"
DEVICE_ID_SYSTEM = "urn:cxr-fhir:model-manifest-sha256"
PATIENT_ID_SYSTEM = "urn:cxr-fhir:patient"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
PROVENANCE_ROLE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
US_CORE_DR_NOTE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-note"
EHR_DELIVERY_STATUS_URL = "urn:cxr-fhir:ehr-delivery-status"
INTERPRETATION_SYSTEM = "urn:cxr-fhir:interpretation"
UNUSUAL_FILM_INTERPRETATION = {"coding": [{"system": INTERPRETATION_SYSTEM, "code": "unusual-film",
                                           "display": "Unusual film, read with care"}],
                               "text": "Unusual film, read with care"}
# The outbox status of a report's newest delivery -> the valueCode of that extension.
FHIR_CODE = {"pending": "pending", "delivered": "delivered", "dead": "failed"}

# R4 ImagingStudy.status and Observation/DiagnosticReport.status from ours.
STUDY_STATUS = {"received": "registered", "queued": "registered", "analyzing": "registered",
                "analyzed": "available", "failed": "available"}
REPORT_STATUS = {"preliminary": "preliminary", "final": "final", "amended": "amended", "cancelled": "cancelled"}


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


def _meta(version_id: int, last_updated: datetime, ai: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"versionId": str(version_id), "lastUpdated": _instant(last_updated)}
    if ai:
        meta["security"] = [AI_ASSISTED]
    return meta


def to_wire(resource) -> dict[str, Any]:
    """JSON-ready dict without None or empty values (FHIR forbids empty elements)."""
    return resource.model_dump(mode="json", exclude_none=True)


def patient(row: Patient) -> FhirPatient:
    name: dict[str, Any] = {"family": row.family}
    if row.given:
        name["given"] = row.given.split()
    # A patient without an MRN is identified by our own id, so the EHR can still match it
    # (conditional create) without duplicates.
    if row.mrn:
        identifiers = [{"use": "usual", "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                        "system": row.mrn_system, "value": row.mrn}]
    else:
        identifiers = [{"use": "secondary", "system": PATIENT_ID_SYSTEM, "value": row.id}]
    data: dict[str, Any] = {
        "id": row.id, "meta": _meta(row.version_id, row.updated_at),
        "identifier": identifiers, "active": row.deleted_at is None, "name": [name], "gender": row.sex,
    }
    if row.birth_date:
        data["birthDate"] = row.birth_date.isoformat()
    return FhirPatient(**data)


def imaging_study(row: Study) -> ImagingStudy:
    modality = {"system": DICOM_DCM, "code": row.modality or "DX"}
    data: dict[str, Any] = {
        "id": row.id, "meta": _meta(row.version_id, row.updated_at),
        "status": "cancelled" if row.deleted_at else STUDY_STATUS.get(row.status, "unknown"),
        "subject": {"reference": f"Patient/{row.patient_id}"},
        "started": _instant(row.acquired_at or row.created_at),
        "modality": [modality], "numberOfSeries": 1, "numberOfInstances": 1,
    }
    identifiers: list[dict[str, Any]] = []
    if row.study_uid:
        identifiers.append({"system": "urn:dicom:uid", "value": f"urn:oid:{row.study_uid}"})
    if row.accession_number:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": row.accession_number})
    if identifiers:
        data["identifier"] = identifiers
    if row.series_uid:
        series: dict[str, Any] = {"uid": row.series_uid, "number": 1, "modality": modality, "numberOfInstances": 1,
                                  "bodySite": {"system": SNOMED, "code": "51185008", "display": "Thoracic structure"}}
        if row.sop_instance_uid and row.sop_class_uid:
            series["instance"] = [{"uid": row.sop_instance_uid, "number": 1,
                                   "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row.sop_class_uid}"}}]
        data["series"] = [series]
    if row.identity_warning:  # for the doctor to resolve, as PACS reconciliation flags it
        data["note"] = [{"text": f"Identity check: {row.identity_warning}"}]
    return ImagingStudy(**data)


def device_id(manifest_sha256: str) -> str:
    """One Device per set of weights, so old results keep pointing at the model that made them."""
    return f"model-{manifest_sha256[:16]}"


def device(model: dict[str, Any]) -> Device:
    return Device.model_validate({
        "id": device_id(model["manifest_sha256"]), "status": "active", "manufacturer": "cxr-fhir project",
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": model["manifest_sha256"]}],
        "deviceName": [{"name": model["name"], "type": "model-name"}],
        "version": [{"value": model["version"]},
                    {"type": {"text": "manifest-sha256"}, "value": model["manifest_sha256"]}],
        "note": [{"text": "AI model; not a medical device; not for clinical use."}],
    })


def _code(name: str) -> dict[str, Any]:
    finding = BY_NAME[name]
    codings = [{"system": SNOMED, "code": finding.snomed, "display": finding.display}] if finding.snomed else []
    codings.append({"system": LOCAL_SYSTEM, "code": finding.local_code, "display": finding.display})
    return {"coding": codings, "text": finding.display}


def _unitless(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 4), "unit": "1", "system": UCUM, "code": "1"}


def model_of(analysis: Analysis) -> dict[str, Any]:
    return {"name": analysis.model_name, "version": analysis.model_version, "manifest_sha256": analysis.manifest_sha256}


def observations(analysis: Analysis, study: Study, report: Report) -> list[Observation]:
    """One Observation per finding of the top three."""
    out: list[Observation] = []
    # The plausibility gate's flag: an atypical film, analysed but to be read with care.
    caution: dict[str, Any] = {"interpretation": [UNUSUAL_FILM_INTERPRETATION],
                               "note": [{"text": UNUSUAL_FILM}]} if analysis.unusual_film else {}
    for rank, item in enumerate(analysis.top3, start=1):
        name = item["finding"]
        components: list[dict[str, Any]] = [
            {"code": {"coding": [{"system": COMPONENT_SYSTEM, "code": "probability",
                                  "display": "Calibrated probability"}]},
             "valueQuantity": _unitless(item["probability"])},
            {"code": {"coding": [{"system": COMPONENT_SYSTEM, "code": "threshold", "display": "Operating threshold"}]},
             "valueQuantity": _unitless(item["threshold"])},
        ]
        for box in (b for b in analysis.boxes if b["finding"] == name):
            components.append({
                "code": {"coding": [{"system": COMPONENT_SYSTEM, "code": "bounding-box",
                                     "display": "Region (x1,y1,x2,y2 image pixels)"}]},
                "valueString": (f"{box['x1']},{box['y1']},{box['x2']},{box['y2']} "
                                f"({box['source']}, {box['confidence']})")})
        out.append(Observation.model_validate({
            "id": f"{analysis.id}-{rank}",
            "meta": _meta(report.version_id, report.updated_at, ai=True),
            "identifier": [{"system": OBSERVATION_ID_SYSTEM, "value": f"{analysis.id}-{rank}"}],
            "status": REPORT_STATUS[report.status] if report.status != "cancelled" else "cancelled",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": _code(name),
            "subject": {"reference": f"Patient/{study.patient_id}"},
            "effectiveDateTime": _instant(study.acquired_at or study.created_at),
            "issued": _instant(analysis.created_at),
            "valueCodeableConcept": {"coding": [PRESENT if item["present"] else ABSENT]},
            "component": components,
            "partOf": [{"reference": f"ImagingStudy/{study.id}"}],
            "derivedFrom": [{"reference": f"ImagingStudy/{study.id}"}],
            "device": {"reference": f"Device/{device_id(analysis.manifest_sha256)}"},
            **caution,
        }))
    return out


def diagnostic_report(report: Report, analysis: Analysis, study: Study, results: list[Observation],
                      overlay_png: bytes | None = None, overlay_url: str | None = None,
                      delivery_status: str | None = None) -> DiagnosticReport:
    """The overlay travels inline (``overlay_png``, for the EHR) or as a link to our Binary."""
    meta = _meta(report.version_id, report.updated_at, ai=True)
    meta["profile"] = [US_CORE_DR_NOTE]
    data: dict[str, Any] = {
        "id": report.id, "meta": meta,
        "identifier": [{"system": REPORT_ID_SYSTEM, "value": report.id}],
        "status": REPORT_STATUS[report.status],
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"},
                                 {"system": LOINC, "code": "LP29684-5", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "36554-4", "display": "XR Chest Single view"}],
                 "text": "XR Chest Single view"},
        "subject": {"reference": f"Patient/{study.patient_id}"},
        "effectiveDateTime": _instant(study.acquired_at or study.created_at),
        "issued": _instant(report.issued),
        "imagingStudy": [{"reference": f"ImagingStudy/{study.id}"}],
        "result": [{"reference": f"Observation/{o.id}"} for o in results],
        "conclusion": report.conclusion,
    }
    if overlay_png or overlay_url:
        top = analysis.top3[0]["finding"]
        form: dict[str, Any] = {"contentType": "image/png", "title": f"Heatmap overlay: {BY_NAME[top].display}"}
        if overlay_png:
            form["data"] = base64.b64encode(overlay_png).decode()
        else:
            form["url"] = overlay_url
        data["presentedForm"] = [form]
    if delivery_status:  # pending | delivered | failed (services.outbox.DeliveryStatus.fhir_code)
        data["extension"] = [{"url": EHR_DELIVERY_STATUS_URL, "valueCode": delivery_status}]
    return DiagnosticReport(**data)


def media(row: Study) -> dict[str, Any]:
    """The uploaded radiograph itself, linked to its ImagingStudy; the pixels are our Binary."""
    data: dict[str, Any] = {
        "resourceType": "Media", "id": row.id,
        "status": "entered-in-error" if row.deleted_at else "completed",
        "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
        "modality": {"coding": [{"system": DICOM_DCM, "code": row.modality or "DX"}]},
        "subject": {"reference": f"Patient/{row.patient_id}"},
        "partOf": [{"reference": f"ImagingStudy/{row.id}"}],
        "createdDateTime": _instant(row.acquired_at or row.created_at),
        "content": {"contentType": row.media_type, "url": f"Binary/{row.content_sha256}", "size": row.size_bytes,
                    "title": "Chest radiograph as uploaded"},
    }
    if row.width and row.height:
        data["width"], data["height"] = row.width, row.height
    return data


def provenance(report: Report, analysis: Analysis, results: list[Observation]) -> dict[str, Any]:
    """The AI model as author of the findings and the draft report; the doctor as verifier once confirmed."""
    agents: list[dict[str, Any]] = [{
        "type": {"coding": [{"system": PROVENANCE_ROLE, "code": "author", "display": "Author"}]},
        "who": {"reference": f"Device/{device_id(analysis.manifest_sha256)}",
                "display": f"{analysis.model_name} {analysis.model_version}"}}]
    if report.confirmed_by:
        agents.append({"type": {"coding": [{"system": PROVENANCE_ROLE, "code": "verifier", "display": "Verifier"}]},
                       "who": {"display": report.confirmed_by}})
    return {
        "resourceType": "Provenance", "id": report.id, "meta": {"security": [AI_ASSISTED]},
        "target": [{"reference": f"DiagnosticReport/{report.id}"}] + [{"reference": f"Observation/{o.id}"}
                                                                     for o in results],
        "recorded": _instant(analysis.created_at), "agent": agents,
    }


# AuditEvent.type/subtype: REST interactions by the FHIR restful-interaction codes, the rest by DICOM.
_REST = "http://hl7.org/fhir/restful-interaction"
_AUDIT_TYPES = {
    "login": ({"system": DICOM_DCM, "code": "110114", "display": "User Authentication"},
              {"system": DICOM_DCM, "code": "110122", "display": "Login"}),
    "logout": ({"system": DICOM_DCM, "code": "110114", "display": "User Authentication"},
               {"system": DICOM_DCM, "code": "110123", "display": "Logout"}),
    "delivery": ({"system": DICOM_DCM, "code": "110106", "display": "Export"}, None),
}


# Who acted, as AuditEvent.agent.who.identifier (the `agent` search parameter): by kind of agent.
AUDIT_AGENT_SYSTEM = {"client": "urn:cxr-fhir:client", "user": "urn:cxr-fhir:user", "system": "urn:cxr-fhir:system"}
# The patient an event on another resource belongs to, as a second entity (DICOM audit: role 1).
_PATIENT_ENTITY = {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                            "display": "Person"},
                   "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                            "display": "Patient"}}
_CODE = re.compile(r"[^\s]+( [^\s]+)*")  # what an R4 code may be


def audit_event(row: AuditEvent, patient: str | None = None) -> FhirAuditEvent:
    """``patient``: the id of the Patient the event is about when its entity is another resource
    of that patient (a DiagnosticReport), rendered as a second entity."""
    if row.subtype in _AUDIT_TYPES:
        type_, subtype = _AUDIT_TYPES[row.subtype]
    else:
        type_ = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"}
        subtype = {"system": _REST, "code": row.subtype}
    who: dict[str, Any] = {"display": f"{row.agent_type}:{row.agent_id or 'anonymous'}"}
    if row.agent_id and row.agent_type in AUDIT_AGENT_SYSTEM:
        who["identifier"] = {"system": AUDIT_AGENT_SYSTEM[row.agent_type], "value": row.agent_id}
    agent: dict[str, Any] = {"who": who, "requestor": True}
    if row.source_ip:
        agent["network"] = {"address": row.source_ip, "type": "2"}
    data: dict[str, Any] = {
        "id": row.id, "type": type_, "action": row.action, "recorded": _instant(row.recorded),
        "outcome": row.outcome, "agent": [agent], "source": {"observer": {"display": "cxr-fhir"}},
    }
    if subtype:
        data["subtype"] = [subtype]
    if row.detail:
        data["outcomeDesc"] = row.detail
    if row.entity_type or row.query:
        entity: dict[str, Any] = {}
        if row.entity_type and row.entity_id:
            entity["what"] = {"reference": f"{row.entity_type}/{row.entity_id}"}
        elif row.entity_type and _CODE.fullmatch(row.entity_type):
            entity["type"] = {"system": "http://hl7.org/fhir/resource-types", "code": row.entity_type}
        elif row.entity_type:  # what a malformed request named as its type: no code, but kept
            entity["description"] = row.entity_type
        if row.query:
            entity["query"] = base64.b64encode(row.query.encode()).decode()
        data["entity"] = [entity]
    if patient and not (row.entity_type == "Patient" and row.entity_id == patient):
        data.setdefault("entity", []).append({"what": {"reference": f"Patient/{patient}"}, **_PATIENT_ENTITY})
    return FhirAuditEvent(**data)
