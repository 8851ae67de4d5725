"""The CapabilityStatement, built from the same tables the server runs on, so it cannot overstate."""

from __future__ import annotations

from typing import Any

from ...fhir.search_params import INCLUDES, PARAMS, REVINCLUDES, SORTABLE
from .analyze import OPERATION_URL
from .providers import PROVIDERS, STORED_TYPES

READ = ["read", "vread", "search-type", "history-instance", "history-type"]
WRITE = ["create", "update", "delete"]
PROFILES = {"DiagnosticReport": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-note"]}
DOCS = {
    "Patient": "Patients of the emergency department. Writes go through the patient registry: a family name "
               "is required and an MRN is unique within its system.",
    "ImagingStudy": "One uploaded radiograph each. Studies analysed here can be read and deleted (logical "
                    "delete, which cancels the report); create new ones with $analyze.",
    "DiagnosticReport": "AI reports are preliminary until a doctor confirms them: update with status 'final' "
                        "(and optionally a new conclusion), later 'amended'. Nothing else of an AI report "
                        "can change.",
    "Observation": "One per reported finding (top three): SNOMED CT and local code, present/absent at the "
                   "operating threshold, calibrated probability and threshold as components, box as a "
                   "component. AI Observations are read-only.",
    "Device": "The AI model (name, version, manifest SHA-256).",
    "Media": "The uploaded radiograph; its pixels are Binary/<sha256>.",
    "Provenance": "The AI model as author of each report and its findings; the confirming doctor as verifier.",
    "AuditEvent": "Every access to patient data, login and delivery; read-only, for clients holding "
                  "system/AuditEvent.read by name (administrators; wildcards do not open it).",
}


def _search_params(rtype: str) -> list[dict[str, Any]]:
    common = [{"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
              {"name": "_lastUpdated", "type": "date",
               "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}]
    own = []
    for p in PARAMS[rtype].values():
        item: dict[str, Any] = {"name": p.name, "type": p.type, "definition": p.definition}
        if p.documentation:
            item["documentation"] = p.documentation
        own.append(item)
    return common + own


def _resource(rtype: str) -> dict[str, Any]:
    provider = PROVIDERS[rtype]
    interactions = READ + (WRITE if provider.writable else [])
    item: dict[str, Any] = {
        "type": rtype,
        "documentation": DOCS[rtype],
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": provider.writable and rtype not in ("DiagnosticReport",),
        "conditionalCreate": provider.writable,
        "conditionalRead": "not-supported",
        "conditionalUpdate": provider.writable,
        "conditionalDelete": "not-supported",
        "searchParam": _search_params(rtype),
        "searchInclude": INCLUDES.get(rtype, []),
        "searchRevInclude": REVINCLUDES.get(rtype, []),
    }
    if rtype in PROFILES:
        item["supportedProfile"] = PROFILES[rtype]
    if rtype == "ImagingStudy":
        item["operation"] = [{"name": "analyze", "definition": OPERATION_URL,
                              "documentation": "Analyse one chest X-ray (DICOM, PNG or JPEG) and store the study, "
                                               "findings and preliminary report."}]
    if not item["searchInclude"]:
        del item["searchInclude"]
    if not item["searchRevInclude"]:
        del item["searchRevInclude"]
    if SORTABLE.get(rtype):
        item["documentation"] += " Sortable by _lastUpdated, _id, " + ", ".join(SORTABLE[rtype]) + "."
    return item


def capability_statement(base: str, software_version: str, published: str) -> dict[str, Any]:
    resources = [_resource(rtype) for rtype in STORED_TYPES]
    resources.append({"type": "Binary", "documentation": "Uploaded images and heatmap overlays by SHA-256; "
                      "raw bytes when the Accept header asks for them.", "interaction": [{"code": "read"}]})
    resources.append({"type": "OperationDefinition", "documentation": "The definition of $analyze.",
                      "interaction": [{"code": "read"}]})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "cxr-fhir project",
        "kind": "instance",
        "software": {"name": "cxr-fhir", "version": software_version},
        "implementation": {"description": "cxr-fhir: AI chest X-ray assistant (not for clinical use)", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Every interaction except metadata needs a bearer token with SMART system scopes "
                             "(system/<Resource>.read|write). Unknown search parameters are ignored and left out of "
                             "the self link, or refused (400) with Prefer: handling=strict.",
            "security": {"cors": False, "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": "Bearer tokens issued by the administrators (cxr-fhir clients create)."},
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }
