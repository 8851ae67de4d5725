"""The search parameters we index and serve, as data (the CapabilityStatement is built from this).

A path is a dotted walk through the resource JSON; lists are flattened on the way, and a
``name[x]`` step matches every choice-type variant (``effectiveDateTime``, ``effectivePeriod``).
Names and definitions are those of FHIR R4 unless ``definition`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

R4 = "http://hl7.org/fhir/SearchParameter/"
OURS = "urn:cxr-fhir:SearchParameter/"


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: str  # token | string | date | reference
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference: resource types it may point at
    definition: str = ""
    documentation: str = ""
    # reference: index only references to the targets (FHIRPath ``.where(resolve() is Patient)``).
    only_targets: bool = False


def _p(name: str, type_: str, *paths: str, targets: tuple[str, ...] = (), definition: str | None = None,
       doc: str = "", only_targets: bool = False) -> SearchParam:
    return SearchParam(name, type_, paths, targets, definition or f"{R4}{name}", doc, only_targets)


# What an audit event can be about, for _include and a reference given without its type.
_AUDITED = ("Patient", "ImagingStudy", "DiagnosticReport", "Observation", "Device", "Media", "Provenance")


def _clinical(type_: str) -> list[SearchParam]:
    """subject / patient, as every clinical resource here has them."""
    return [
        _p("subject", "reference", "subject", targets=("Patient",),
           definition=f"{R4}{type_}-subject"),
        _p("patient", "reference", "subject", targets=("Patient",), definition=f"{R4}clinical-patient"),
    ]


PARAMS: dict[str, dict[str, SearchParam]] = {
    "Patient": {p.name: p for p in [
        _p("identifier", "token", "identifier", definition=f"{R4}Patient-identifier"),
        _p("name", "string", "name.family", "name.given", "name.text", "name.prefix", "name.suffix",
           definition=f"{R4}Patient-name"),
        _p("family", "string", "name.family", definition=f"{R4}individual-family"),
        _p("given", "string", "name.given", definition=f"{R4}individual-given"),
        _p("birthdate", "date", "birthDate", definition=f"{R4}individual-birthdate"),
        _p("gender", "token", "gender", definition=f"{R4}individual-gender"),
        _p("active", "token", "active", definition=f"{R4}Patient-active"),
    ]},
    "ImagingStudy": {p.name: p for p in [
        *_clinical("ImagingStudy"),
        _p("identifier", "token", "identifier", definition=f"{R4}clinical-identifier"),
        _p("started", "date", "started", definition=f"{R4}ImagingStudy-started"),
        _p("modality", "token", "modality", "series.modality", definition=f"{R4}ImagingStudy-modality"),
        _p("status", "token", "status", definition=f"{R4}ImagingStudy-status"),
    ]},
    "DiagnosticReport": {p.name: p for p in [
        *_clinical("DiagnosticReport"),
        _p("code", "token", "code", definition=f"{R4}clinical-code"),
        _p("category", "token", "category", definition=f"{R4}DiagnosticReport-category"),
        _p("status", "token", "status", definition=f"{R4}DiagnosticReport-status"),
        _p("date", "date", "effective[x]", definition=f"{R4}clinical-date"),
        _p("issued", "date", "issued", definition=f"{R4}DiagnosticReport-issued"),
        _p("identifier", "token", "identifier", definition=f"{R4}clinical-identifier"),
        _p("result", "reference", "result", targets=("Observation",), definition=f"{R4}DiagnosticReport-result"),
        _p("imaging-study", "reference", "imagingStudy", targets=("ImagingStudy",),
           definition=f"{OURS}DiagnosticReport-imaging-study",
           doc="DiagnosticReport.imagingStudy (not a standard R4 parameter)"),
    ]},
    "Observation": {p.name: p for p in [
        *_clinical("Observation"),
        _p("code", "token", "code", definition=f"{R4}clinical-code"),
        _p("category", "token", "category", definition=f"{R4}Observation-category"),
        _p("status", "token", "status", definition=f"{R4}Observation-status"),
        _p("value-concept", "token", "valueCodeableConcept", definition=f"{R4}Observation-value-concept"),
        _p("date", "date", "effective[x]", definition=f"{R4}clinical-date"),
        _p("identifier", "token", "identifier", definition=f"{R4}clinical-identifier"),
        _p("part-of", "reference", "partOf", targets=("ImagingStudy",), definition=f"{R4}Observation-part-of"),
        _p("derived-from", "reference", "derivedFrom", targets=("ImagingStudy",),
           definition=f"{R4}Observation-derived-from"),
        _p("device", "reference", "device", targets=("Device",), definition=f"{R4}Observation-device"),
    ]},
    "Device": {p.name: p for p in [
        _p("identifier", "token", "identifier", definition=f"{R4}Device-identifier"),
        _p("device-name", "string", "deviceName.name", definition=f"{R4}Device-device-name"),
        _p("status", "token", "status", definition=f"{R4}Device-status"),
    ]},
    "Media": {p.name: p for p in [
        *_clinical("Media"),
        _p("identifier", "token", "identifier", definition=f"{R4}Media-identifier"),
        _p("status", "token", "status", definition=f"{R4}Media-status"),
        _p("created", "date", "created[x]", definition=f"{R4}Media-created"),
    ]},
    "Provenance": {p.name: p for p in [
        _p("target", "reference", "target", targets=("DiagnosticReport", "Observation"),
           definition=f"{R4}Provenance-target"),
        _p("agent", "reference", "agent.who", targets=("Device",), definition=f"{R4}Provenance-agent"),
        _p("recorded", "date", "recorded", definition=f"{R4}Provenance-recorded"),
    ]},
    # One is written for every request, so only what an auditor asks for is indexed.
    "AuditEvent": {p.name: p for p in [
        _p("date", "date", "recorded", definition=f"{R4}AuditEvent-date"),
        _p("agent", "token", "agent.who.identifier", definition=f"{OURS}AuditEvent-agent",
           doc="Who acted: AuditEvent.agent.who.identifier, the API client's or user's name (system "
               "urn:cxr-fhir:client, urn:cxr-fhir:user or urn:cxr-fhir:system); a token here, where R4's "
               "agent is a reference"),
        _p("patient", "reference", "entity.what", targets=("Patient",), only_targets=True,
           definition=f"{R4}AuditEvent-patient",
           doc="The Patient the event is about: the entity itself, or the patient of the resource acted on"),
        _p("entity", "reference", "entity.what", targets=_AUDITED, definition=f"{R4}AuditEvent-entity"),
        _p("type", "token", "type", definition=f"{R4}AuditEvent-type"),
        _p("subtype", "token", "subtype", definition=f"{R4}AuditEvent-subtype"),
        _p("action", "token", "action", definition=f"{R4}AuditEvent-action"),
        _p("outcome", "token", "outcome", definition=f"{R4}AuditEvent-outcome"),
    ]},
}

# _include / _revinclude values we answer (and announce). Any reference parameter works the same way.
INCLUDES: dict[str, list[str]] = {
    rtype: [f"{rtype}:{p.name}" for p in params.values() if p.type == "reference"]
    for rtype, params in PARAMS.items()
}
REVINCLUDES: dict[str, list[str]] = {
    target: sorted({inc for rtype, incs in INCLUDES.items() for inc in incs
                    if target in PARAMS[rtype][inc.split(":")[1]].targets})
    for target in PARAMS
}

# Sort keys: every date and string parameter, plus _lastUpdated / _id.
SORTABLE = {rtype: [p.name for p in params.values() if p.type in ("date", "string")]
            for rtype, params in PARAMS.items()}
