"""One provider per resource type: what create, update and delete mean for it. No HTTP here.

Resources a client creates are stored as sent. Resources that are projections of our own rows
(patients, AI results) change only through the services that own those rows, so the API and the
pages can never disagree: a Patient update goes through the patient service, a DiagnosticReport
update may only confirm or amend the report, an ImagingStudy delete deletes the study.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlmodel import Session

from ...domain.errors import Gone, NotFound, VersionConflict
from ...domain.text import has_control
from ...domain.vocabulary import Origin, ReportStatus
from ...fhir import bindings, mapping, references
from ...imaging.loader import sniff
from ...records.tables import FhirResource
from ...services.patients import PatientInput, PatientInvalid, PatientService
from ...services.reports import ReportStateError
from ...storage.fhir import store
from . import errors
from .analyze import OPERATION_DEFINITION, OPERATION_ID

# Elements a server owns on every resource; a client's values are replaced, never compared.
_SERVER_OWNED = ("id", "meta", "text")


@dataclass
class Actor:
    """Who is calling (an API client name, or 'user:<name>'), for history and audit."""

    name: str


def parse(resource_type: str, body: Any) -> dict[str, Any]:
    """Validate a resource against the R4 model; the clean JSON (no nulls, no empty elements)."""
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be a JSON object holding one FHIR resource")
    if body.get("resourceType") != resource_type:
        raise errors.bad_request(f"resourceType {body.get('resourceType')!r} does not match {resource_type}",
                                 ["resourceType"])
    try:
        model = get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as exc:
        issues: list[dict[str, Any]] = [
            {"severity": "error", "code": "structure", "diagnostics": e["msg"],
             "expression": [".".join(str(p) for p in (resource_type, *e["loc"]))]}
            for e in exc.errors()[:20]]
        raise errors.FhirError(400, f"{resource_type} is not valid FHIR R4: {exc.errors()[0]['msg']}",
                               "structure", issues[0]["expression"], issues=issues[1:]) from exc
    content = mapping.to_wire(model)
    coerced = _coerced(body, content, resource_type)
    if coerced:
        # The model is lenient (birthDate 0 became 1970-01-01, "true" became true): FHIR JSON is not.
        raise errors.bad_request(f"{coerced} has the wrong JSON type for FHIR R4", [coerced])
    where = _control_character(content, resource_type)
    if where:
        # FHIR strings SHALL NOT hold characters below U+0020 other than tab, CR and LF; PostgreSQL
        # cannot even store U+0000 in JSON. Refused as the patient service refuses them in names.
        raise errors.unprocessable(f"{where} contains control characters", [where])
    wrong = bindings.violations(content)
    if wrong:
        # R4 required bindings: the model takes any string as a code, FHIR does not.
        raise errors.unprocessable("; ".join(f"{path}: {value!r} is not a code of its R4 value set ("
                                             + " | ".join(codes) + ")" for path, value, codes in wrong),
                                   [path for path, _, _ in wrong])
    misdirected = references.wrong_targets(resource_type, model)[:20]
    if misdirected:
        # R4 type constraints (Observation.device is Reference(Device | DeviceMetric)): the model takes a
        # reference to any type; served as it stands, an _include would return a type of its own choosing.
        raise errors.unprocessable("; ".join(f"{path}: {ref!r} is not a reference to " + " | ".join(allowed)
                                             for path, ref, allowed in misdirected),
                                   [path for path, _, _ in misdirected])
    return content


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _coerced(sent: Any, kept: Any, path: str) -> str | None:
    """Where the validated resource holds a value of another JSON type than the client sent."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        for key in sent.keys() & kept.keys():
            found = _coerced(sent[key], kept[key], f"{path}.{key}")
            if found:
                return found
    elif isinstance(sent, list) and isinstance(kept, list):
        for a, b in zip(sent, kept, strict=False):  # the kept list may have dropped elements
            found = _coerced(a, b, path)
            if found:
                return found
    elif sent is not None and kept is not None and _kind(sent) != _kind(kept):
        return path
    return None


ALLOWED_CONTROL = "\t\r\n"  # FHIR strings may hold these, and nothing else below U+0020


def _control_character(value: Any, path: str) -> str | None:
    """The FHIRPath-like location of the first string (or key) holding a control character."""
    if isinstance(value, str):
        return path if has_control(value, allowed=ALLOWED_CONTROL) else None
    if isinstance(value, dict):
        for key, child in value.items():
            found = _control_character(key, path) or _control_character(child, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for child in value:
            found = _control_character(child, path)
            if found:
                return found
    return None


def _strip(content: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in content.items() if k not in _SERVER_OWNED}


def _check_version(row: FhirResource | None, if_match: int | None) -> None:
    if if_match is not None and (row is None or row.version_id != if_match):
        current = row.version_id if row else "none"
        raise VersionConflict(if_match, None, f"If-Match version {if_match} is stale; the current version is {current}")


class Provider:
    """A resource type stored as clients send it."""

    resource_type: str
    writable = True
    stored = True  # kept in the FHIR store: searchable, with history
    public = False  # readable without a scope naming it (definitions, not patient data)
    raw = False  # may answer a read with the bytes themselves (content negotiation by Accept)

    def __init__(self, resource_type: str, services: Any):
        self.resource_type, self.services = resource_type, services

    def read(self, s: Session, rid: str) -> FhirResource | ReadOnly:
        return store.read(s, self.resource_type, rid)

    def create(self, s: Session, content: dict[str, Any], actor: Actor, new_id: str | None = None) -> FhirResource:
        if not self.writable:
            raise errors.FhirError(405, f"{self.resource_type} is read-only here", "not-supported")
        from ...records.types import new_id as make_id
        rid = new_id or make_id()
        store.put(s, self.resource_type, rid, _strip(content), origin=Origin.API)
        return store.read(s, self.resource_type, rid)

    def update(self, s: Session, rid: str, content: dict[str, Any], actor: Actor, if_match: int | None
               ) -> tuple[FhirResource, bool]:
        """Returns the new version and whether it was created by this update."""
        row = store.get_row(s, self.resource_type, rid, lock=True)
        _check_version(row, if_match)
        if row is not None and row.deleted and row.origin == Origin.DOMAIN:
            raise errors.gone(f"{self.resource_type}/{rid} was deleted and cannot be recreated")
        if row is None or row.deleted:
            return self.create(s, content, actor, new_id=rid), True
        self._check_writable(row, "update")
        store.put(s, self.resource_type, rid, _strip(content), origin=Origin.API)
        return store.read(s, self.resource_type, rid), False

    def delete(self, s: Session, rid: str, actor: Actor, if_match: int | None = None) -> None:
        row = store.get_row(s, self.resource_type, rid, lock=True)
        if row is None:
            raise errors.not_found(f"{self.resource_type}/{rid} is not known")
        if row.deleted:
            return
        _check_version(row, if_match)
        self._check_writable(row, "delete")
        store.mark_deleted(s, self.resource_type, rid)

    def _check_writable(self, row: FhirResource, what: str) -> None:
        if not self.writable:  # the type: no write interaction exists for it (as for a create)
            raise errors.FhirError(405, f"{self.resource_type} is read-only here", "not-supported")
        if row.origin == Origin.DOMAIN:
            raise errors.FhirError(422, f"{self.resource_type}/{row.id} is produced by cxr-fhir and cannot be "
                                        f"changed by {what}", "business-rule")


def _patient_input(content: dict[str, Any], default_system: str) -> PatientInput:
    identifiers = [i for i in content.get("identifier", []) if i.get("system") != mapping.PATIENT_ID_SYSTEM]
    mrn = next((i for i in identifiers if any(c.get("code") == "MR" for c in i.get("type", {}).get("coding", []))),
               identifiers[0] if identifiers else None)
    names = content.get("name", [])
    name = next((n for n in names if n.get("use") in ("official", "usual")), names[0] if names else {})
    family = name.get("family") or ""
    if not family:
        raise errors.unprocessable("a Patient needs a family name (Patient.name.family)", ["Patient.name"])
    birth = content.get("birthDate")
    try:
        birth_date = date.fromisoformat(birth) if birth and len(birth) == 10 else None
    except ValueError:
        birth_date = None
    return PatientInput(family=family, given=" ".join(name.get("given", [])), birth_date=birth_date,
                        sex=content.get("gender", "unknown"), mrn=mrn.get("value") if mrn else None,
                        mrn_system=(mrn.get("system") or default_system) if mrn else None)


# The patient service names its fields; a FHIR client is told the elements they come from.
_PATIENT_PATHS = {"mrn": "Patient.identifier", "mrn_system": "Patient.identifier.system",
                  "family": "Patient.name.family", "given": "Patient.name.given", "birth_date": "Patient.birthDate",
                  "sex": "Patient.gender"}


@contextmanager
def _patient_paths() -> Iterator[None]:
    try:
        yield
    except PatientInvalid as exc:
        exc.where = [_PATIENT_PATHS.get(k, "Patient") for k in exc.errors]
        raise


class PatientProvider(Provider):
    """Patients are our own rows; the posted JSON is kept beside them."""

    def _service(self) -> PatientService:
        return self.services.patients

    def _input(self, content: dict[str, Any]) -> PatientInput:
        return _patient_input(content, self.services.settings.hospital_mrn_system)

    def create(self, s, content, actor, new_id=None):
        with _patient_paths():
            row = self._service().register(s, self._input(content), actor.name, _strip(content), patient_id=new_id)
        return store.read(s, "Patient", row.id)

    def update(self, s, rid, content, actor, if_match):
        row = store.get_row(s, "Patient", rid)
        _check_version(row, if_match)
        if row is None or row.deleted:
            if row is not None:
                raise errors.gone(f"Patient/{rid} was deleted; register a new patient instead")
            return self.create(s, content, actor, new_id=rid), True
        # If-Match is checked again under the patient row's lock: two writers cannot both pass it.
        with _patient_paths():
            self._service().update(s, rid, self._input(content), actor.name, expected_version=if_match,
                                   fhir_extra=_strip(content))
        return store.read(s, "Patient", rid), False

    def delete(self, s, rid, actor, if_match=None):
        row = store.get_row(s, "Patient", rid)
        if row is None:
            raise errors.not_found(f"Patient/{rid} is not known")
        _check_version(row, if_match)
        if not row.deleted:
            self._service().delete(s, rid, actor.name, expected_version=if_match)


class ImagingStudyProvider(Provider):
    """Studies we analysed can only be deleted (logically, with their report cancelled)."""

    def delete(self, s, rid, actor, if_match=None):
        row = store.get_row(s, "ImagingStudy", rid)
        if row is not None and row.origin == Origin.DOMAIN and not row.deleted:
            _check_version(row, if_match)
            self.services.studies.delete(s, rid, actor.name, expected_version=if_match)
            return
        super().delete(s, rid, actor, if_match)


class DiagnosticReportProvider(Provider):
    """An AI report may be confirmed (status final) or amended (new conclusion), nothing else."""

    def update(self, s, rid, content, actor, if_match):
        row = store.get_row(s, "DiagnosticReport", rid)
        if row is None or row.origin != Origin.DOMAIN or row.deleted:
            return super().update(s, rid, content, actor, if_match)
        _check_version(row, if_match)
        current = row.content
        changed = {k for k in set(_strip(current)) | set(_strip(content))
                   if k not in ("status", "conclusion") and _strip(current).get(k) != _strip(content).get(k)}
        if changed:
            raise errors.FhirError(422, "only status and conclusion of an AI report can change; also changed: "
                                   + ", ".join(sorted(changed)), "business-rule",
                                   [f"DiagnosticReport.{k}" for k in sorted(changed)])
        reports = self.services.reports
        status, conclusion = content.get("status"), content.get("conclusion")
        try:
            if status == ReportStatus.FINAL and current["status"] == ReportStatus.PRELIMINARY:
                reports.confirm(s, rid, actor.name, conclusion=conclusion, expected_version=if_match)
            elif status == ReportStatus.AMENDED and current["status"] in (ReportStatus.FINAL, ReportStatus.AMENDED):
                reports.amend(s, rid, conclusion or "", actor.name, expected_version=if_match)
            elif status == current["status"] and conclusion == current.get("conclusion"):
                return store.read(s, "DiagnosticReport", rid), False  # nothing to change
            else:
                raise errors.FhirError(422, f"a {current['status']} report cannot become {status}: confirm a "
                                            "preliminary report with status 'final', amend a final one with "
                                            "status 'amended'", "business-rule", ["DiagnosticReport.status"])
        except ReportStateError as exc:
            exc.where = exc.where or ["DiagnosticReport"]
            raise
        except (NotFound, Gone) as exc:
            raise errors.gone(str(exc)) from exc
        return store.read(s, "DiagnosticReport", rid), False


class ReadOnlyProvider(Provider):
    writable = False


@dataclass(frozen=True)
class ReadOnly:
    """A resource that is not kept in the FHIR store (no versions): built when it is read."""

    content: dict[str, Any]
    raw: bytes | None = None  # the bytes a Binary stands for, for a client that asks for them
    content_type: str | None = None


class BinaryProvider(ReadOnlyProvider):
    """Images and heatmap overlays, by the SHA-256 of their bytes in the image store."""

    stored, raw = False, True

    def read(self, s: Session, rid: str) -> ReadOnly:
        images = self.services.images
        if len(rid) != 64 or not all(c in "0123456789abcdef" for c in rid) or not images.exists(rid):
            raise NotFound(f"Binary/{rid} is not known")
        data = images.get(rid)
        ctype = sniff(data)
        return ReadOnly({"resourceType": "Binary", "id": rid, "contentType": ctype,
                         "data": base64.b64encode(data).decode()}, data, ctype)


class OperationDefinitionProvider(ReadOnlyProvider):
    """The definitions of our operations ($analyze): public, as the CapabilityStatement is."""

    stored, public = False, True

    def read(self, s: Session, rid: str) -> ReadOnly:
        if rid != OPERATION_ID:
            raise NotFound(f"OperationDefinition/{rid} is not known")
        return ReadOnly(OPERATION_DEFINITION)


PROVIDERS: dict[str, type[Provider]] = {
    "Patient": PatientProvider,
    "ImagingStudy": ImagingStudyProvider,
    "DiagnosticReport": DiagnosticReportProvider,
    "Observation": Provider,
    "Device": Provider,
    "Media": Provider,
    "Provenance": ReadOnlyProvider,
    "AuditEvent": ReadOnlyProvider,  # written only by the audit trail itself (security.audit)
    "Binary": BinaryProvider,
    "OperationDefinition": OperationDefinitionProvider,
}
STORED_TYPES = tuple(name for name, cls in PROVIDERS.items() if cls.stored)
