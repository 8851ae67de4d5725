"""The R4 type constraints of references: which resource types a Reference element may point at.

``Observation.device`` is ``Reference(Device | DeviceMetric)``: a device that names ``Patient/X``
is not FHIR R4, and served as it stands it would let ``_include=Observation:device`` hand out a
Patient. The R4 model (fhir.resources) carries the allowed target types of every Reference
element (``enum_reference_types``) but does not enforce them; ``wrong_targets`` walks a resource
(every element: backbone elements, datatypes, extensions, list items and contained resources)
and names each reference whose target type is not one its element allows.

Only references that name a type are checked: relative ``Type/id`` (with or without
``/_history/n``) and absolute URLs ending in ``Type/id``. Local (``#id``) and ``urn:`` references
(``urn:uuid:`` inside a transaction, resolved to ``Type/id`` before a resource is parsed) are left
alone, as are elements whose allowed type is ``Resource`` or ``Any``. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel

# (FHIRPath of the element, the reference as sent, the target types its element allows)
WrongTarget = tuple[str, str, tuple[str, ...]]

ANY_TYPE = frozenset({"Resource", "Any", "DomainResource"})
# A resource type name as a reference spells it (R4: [A-Z][A-Za-z]+); what is not one names no type.
_TYPE = re.compile(r"[A-Z][A-Za-z]+")


def target_type(reference: str) -> str | None:
    """The resource type a literal reference names ('Patient/1', 'http://h/fhir/Patient/1/_history/2'),
    or None where it names none (a local '#id', a 'urn:' reference, a single segment)."""
    if reference.startswith(("#", "urn:")):
        return None
    # The same key the search index keeps for a reference (storage.fhir.index.reference_key).
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or not _TYPE.fullmatch(parts[-2]):
        return None
    return parts[-2]


def wrong_targets(resource_type: str, resource: FHIRAbstractModel | dict[str, Any]) -> list[WrongTarget]:
    """Every reference of the resource (a validated R4 model, or its JSON) whose target type is not
    allowed for its element, in document order."""
    model = resource if isinstance(resource, FHIRAbstractModel) else \
        get_fhir_model_class(resource_type).model_validate(resource)
    return list(_walk(model, resource_type))


def _allowed(extra: Any) -> tuple[str, ...] | None:
    """The target types of a Reference element; None: any type."""
    types = extra.get("enum_reference_types") if isinstance(extra, dict) else None
    if not types or ANY_TYPE & set(types):
        return None
    return tuple(types)


def _walk(model: FHIRAbstractModel, path: str) -> Iterator[WrongTarget]:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name, None)
        if value is None:
            continue
        step = f"{path}.{field.alias or name}"
        allowed = _allowed(field.json_schema_extra)
        items = [(f"{step}[{i}]", item) for i, item in enumerate(value)] if isinstance(value, list) else \
            [(step, value)]
        for where, item in items:
            if not isinstance(item, FHIRAbstractModel):
                continue
            if allowed is not None and item.get_resource_type() == "Reference":
                ref = getattr(item, "reference", None)
                if isinstance(ref, str) and (target := target_type(ref)) is not None and target not in allowed:
                    yield where, ref, allowed
            # Datatypes hold references too (Reference.identifier.assigner), contained resources theirs.
            yield from _walk(item, where)
