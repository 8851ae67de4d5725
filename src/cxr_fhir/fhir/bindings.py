"""The R4 required bindings we enforce, as data: a code outside its value set is refused.

The R4 model (fhir.resources) checks the shape of a resource but takes any string as a code, so
``ImagingStudy.status: "not-a-status"`` would be stored. ``violations`` walks a resource (as
clean JSON) along the elements listed here, including the datatypes inside it (HumanName.use,
Identifier.use, ContactPoint.system ...), and names each code that is not in its value set.
Extensible and preferred bindings (ImagingStudy.series.modality, languages) are not listed: any
code may be used there. Pure: no I/O, no models.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# -- R4 value sets (http://hl7.org/fhir/R4/valueset-*.html) ---------------------------------------

ADMINISTRATIVE_GENDER = ("male", "female", "other", "unknown")
IMAGING_STUDY_STATUS = ("registered", "available", "cancelled", "entered-in-error", "unknown")
DIAGNOSTIC_REPORT_STATUS = ("registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                            "cancelled", "entered-in-error", "unknown")
OBSERVATION_STATUS = ("registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error",
                      "unknown")
EVENT_STATUS = ("preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error",
                "unknown")
DEVICE_STATUS = ("active", "inactive", "entered-in-error", "unknown")
DEVICE_NAME_TYPE = ("udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name",
                    "model-name", "other")
UDI_ENTRY_TYPE = ("barcode", "rfid", "manual", "card", "self-reported", "unknown")
LINK_TYPE = ("replaced-by", "replaces", "refer", "seealso")
PROVENANCE_ENTITY_ROLE = ("derivation", "revision", "quotation", "source", "removal")
NAME_USE = ("usual", "official", "temp", "nickname", "anonymous", "old", "maiden")
IDENTIFIER_USE = ("usual", "official", "temp", "secondary", "old")
CONTACT_POINT_SYSTEM = ("phone", "fax", "email", "pager", "url", "sms", "other")
CONTACT_POINT_USE = ("home", "work", "temp", "old", "mobile")
ADDRESS_USE = ("home", "work", "temp", "old", "billing")
ADDRESS_TYPE = ("postal", "physical", "both")
NARRATIVE_STATUS = ("generated", "extensions", "additional", "empty")
QUANTITY_COMPARATOR = ("<", "<=", ">=", ">")

ValueSet = tuple[str, ...]

# -- where they bind ------------------------------------------------------------------------------

# The coded elements of a datatype.
DATATYPES: dict[str, dict[str, ValueSet]] = {
    "HumanName": {"use": NAME_USE},
    "Identifier": {"use": IDENTIFIER_USE},
    "ContactPoint": {"system": CONTACT_POINT_SYSTEM, "use": CONTACT_POINT_USE},
    "Address": {"use": ADDRESS_USE, "type": ADDRESS_TYPE},
    "Narrative": {"status": NARRATIVE_STATUS},
    "Quantity": {"comparator": QUANTITY_COMPARATOR},
}

# Per resource type: a dotted element path (lists are walked through) -> its value set, or the
# name of the datatype it holds. Every resource also has its Narrative (``text``); an element
# named ``identifier`` is an Identifier wherever it occurs (Reference.identifier too).
ELEMENTS: dict[str, dict[str, ValueSet | str]] = {
    "Patient": {
        "gender": ADMINISTRATIVE_GENDER, "name": "HumanName", "telecom": "ContactPoint", "address": "Address",
        "contact.name": "HumanName", "contact.telecom": "ContactPoint", "contact.address": "Address",
        "contact.gender": ADMINISTRATIVE_GENDER, "link.type": LINK_TYPE,
    },
    "ImagingStudy": {"status": IMAGING_STUDY_STATUS},
    "DiagnosticReport": {"status": DIAGNOSTIC_REPORT_STATUS},
    "Observation": {"status": OBSERVATION_STATUS, "valueQuantity": "Quantity",
                    "component.valueQuantity": "Quantity"},
    "Media": {"status": EVENT_STATUS},
    "Device": {"status": DEVICE_STATUS, "deviceName.type": DEVICE_NAME_TYPE, "udiCarrier.entryType": UDI_ENTRY_TYPE,
               "contact": "ContactPoint"},
    "Provenance": {"entity.role": PROVENANCE_ENTITY_ROLE},
}
EVERY_RESOURCE: dict[str, ValueSet | str] = {"text": "Narrative"}
ANYWHERE: dict[str, str] = {"identifier": "Identifier"}

Violation = tuple[str, Any, ValueSet]  # (FHIRPath of the element, the value found, the codes allowed)


def _at(node: Any, steps: list[str], path: str) -> Iterator[tuple[str, Any]]:
    """(FHIRPath, value) of every value at the dotted steps; list items are indexed: name[1].use."""
    if not steps:
        yield path, node
        return
    if not isinstance(node, dict) or steps[0] not in node:
        return
    value, step = node[steps[0]], f"{path}.{steps[0]}"
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _at(item, steps[1:], f"{step}[{i}]")
    else:
        yield from _at(value, steps[1:], step)


def _check(value: Any, spec: ValueSet | str, path: str) -> Iterator[Violation]:
    if isinstance(spec, str):  # a datatype: its own coded elements
        if isinstance(value, dict):
            for element, codes in DATATYPES[spec].items():
                for where, code in _at(value, [element], path):
                    yield from _check(code, codes, where)
    elif value not in spec:
        yield path, value, spec


def _anywhere(node: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    """Elements of a fixed datatype wherever they occur (not inside contained resources)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _anywhere(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, child in node.items():
            if key == "contained":
                continue
            if key in ANYWHERE:
                for where, value in _at(node, [key], path):
                    yield where, value, ANYWHERE[key]
            yield from _anywhere(child, f"{path}.{key}")


def violations(resource: dict[str, Any], path: str | None = None) -> list[Violation]:
    """Every coded element of the resource whose code is not in its required R4 value set, as
    (FHIRPath, value, allowed codes); empty when all are. Contained resources are checked too."""
    rtype = resource.get("resourceType")
    path = path or str(rtype)
    found: list[Violation] = []
    for element, spec in {**EVERY_RESOURCE, **ELEMENTS.get(str(rtype), {})}.items():
        for where, value in _at(resource, element.split("."), path):
            found += _check(value, spec, where)
    for where, value, datatype in _anywhere(resource, path):
        found += _check(value, datatype, where)
    for i, inner in enumerate(resource.get("contained") or []):
        if isinstance(inner, dict):
            found += violations(inner, f"{path}.contained[{i}]")
    return found
