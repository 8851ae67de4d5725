"""Register, edit and delete patients: the one way the pages and the FHIR API change a patient.

Validation errors name the field they belong to, so a form can show each message next to its
field and a FHIR client gets them as OperationOutcome issues with an expression.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from ..domain.errors import Duplicate, Invalid, InvalidRequest
from ..domain.text import has_control
from ..records.tables import Patient
from ..storage.fhir import projection
from ..storage.repositories import PatientRepository

GENDERS = ("male", "female", "other", "unknown")
# The identifier system of a PatientID whose IssuerOfPatientID names no system we were told of.
ISSUER_SYSTEM_PREFIX = "urn:cxr-fhir:issuer:"


class PatientInvalid(Invalid):
    """field -> message, for every field that is wrong."""


class DuplicateMrn(Duplicate, PatientInvalid):
    """The MRN is registered to another patient (a conflict, and a field error on the form)."""

    def __init__(self) -> None:
        PatientInvalid.__init__(self, {"mrn": "already registered to another patient"})


@dataclass
class PatientInput:
    family: str
    mrn: str | None = None
    mrn_system: str | None = None
    given: str = ""
    birth_date: date | None = None
    sex: str = "unknown"
    er_area: str | None = None
    triage_level: int | None = None
    attending_doctor: str | None = None
    notes: str | None = None


def _text(value: str | None, field: str, limit: int, errors: dict[str, str], required: bool = False) -> str | None:
    if value is None:
        value = ""
    # Control characters have no place in a name or MRN; normalise so look-alikes compare equal.
    value = unicodedata.normalize("NFC", value).strip()
    if has_control(value):
        errors[field] = "contains control characters"
    elif len(value) > limit:
        errors[field] = f"at most {limit} characters"
    elif required and not value:
        errors[field] = "required"
    return value or None


def validate(data: PatientInput, default_system: str) -> dict[str, Any]:
    """The column values for a valid input, else PatientInvalid with every problem found."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {
        "family": _text(data.family, "family", 200, errors, required=True),
        "given": _text(data.given, "given", 200, errors) or "",
        "mrn": _text(data.mrn, "mrn", 64, errors),
        "mrn_system": _text(data.mrn_system, "mrn_system", 255, errors) or default_system,
        "er_area": _text(data.er_area, "er_area", 64, errors),
        "attending_doctor": _text(data.attending_doctor, "attending_doctor", 200, errors),
        "notes": (data.notes or "").strip()[:5000] or None,
        "sex": data.sex or "unknown",
        "birth_date": data.birth_date,
        "triage_level": data.triage_level,
    }
    if out["sex"] not in GENDERS:
        errors["sex"] = f"one of {', '.join(GENDERS)}"
    if data.birth_date is not None and (data.birth_date > date.today() or data.birth_date.year < 1880):
        errors["birth_date"] = "must be a real date, not in the future"
    if data.triage_level is not None and not 1 <= data.triage_level <= 5:
        errors["triage_level"] = "ESI level 1 to 5"
    if errors:
        raise PatientInvalid(errors)
    return out


class PatientService:
    """The patient registry. Each method works inside the caller's unit of work (``writing``), so
    a FHIR transaction can register a patient and file a study under it atomically."""

    def __init__(self, default_mrn_system: str, issuer_systems: Mapping[str, str] | None = None):
        """``issuer_systems``: IssuerOfPatientID -> identifier system, for issuers whose system is
        known (e.g. the hospital's own issuer -> its MRN system); others get ISSUER_SYSTEM_PREFIX."""
        self.default_mrn_system = default_mrn_system
        self.issuer_systems = dict(issuer_systems or {})

    def dicom_system(self, issuer: str | None) -> str:
        """The identifier system of a DICOM PatientID: an MRN means something only within its
        issuer, so the same PatientID from two issuers is two patients. No issuer: the hospital's."""
        if not issuer:
            return self.default_mrn_system
        return self.issuer_systems.get(issuer) or ISSUER_SYSTEM_PREFIX + issuer

    def find_dicom(self, s: Session, header: Mapping[str, Any]) -> Patient | None:
        """The registered patient a DICOM header names (PatientID + IssuerOfPatientID), if any."""
        mrn = header.get("patient_id")
        return PatientRepository(s).by_mrn(mrn, self.dicom_system(header.get("patient_issuer"))) if mrn else None

    def register(self, s: Session, data: PatientInput, actor: str, fhir_extra: dict[str, Any] | None = None,
                 patient_id: str | None = None) -> Patient:
        """``fhir_extra``: the rest of a Patient posted over FHIR (telecom, address ...), kept as sent."""
        values = validate(data, self.default_mrn_system)
        repo = PatientRepository(s)
        self._check_mrn_free(repo, values, None)
        row = Patient(**values)
        if patient_id:
            row.id = patient_id
        try:
            row = repo.create(row, actor=actor)
        except IntegrityError as exc:  # registered by someone else a moment ago (unique index)
            raise DuplicateMrn() from exc
        projection.patient(s, row, fhir_extra)
        return row

    def update(self, s: Session, patient_id: str, data: PatientInput, actor: str,
               expected_version: int | None = None, fhir_extra: dict[str, Any] | None = None) -> Patient:
        values = validate(data, self.default_mrn_system)
        repo = PatientRepository(s)
        self._check_mrn_free(repo, values, patient_id)
        try:
            row = repo.update(patient_id, values, actor=actor, expected_version=expected_version)
        except IntegrityError as exc:
            raise DuplicateMrn() from exc
        projection.patient(s, row, fhir_extra)
        return row

    def delete(self, s: Session, patient_id: str, actor: str, expected_version: int | None = None) -> Patient:
        row = PatientRepository(s).soft_delete(patient_id, actor=actor, expected_version=expected_version)
        projection.deleted(s, "Patient", row.id, row.version_id, row.updated_at)
        return row

    def from_dicom(self, s: Session, header: Mapping[str, Any], actor: str) -> Patient:
        """The patient a DICOM film names (PatientID within IssuerOfPatientID), registered from
        its header when unknown. Two films of a new patient arriving at once register it once:
        the loser of the unique MRN index takes the winner's row."""
        mrn = header.get("patient_id")
        if not mrn:
            raise InvalidRequest("the DICOM image has no PatientID; give a subject")
        existing = self.find_dicom(s, header)
        if existing is not None:
            return existing
        family, _, given = (header.get("patient_name") or "Unknown").partition("^")
        birth = header.get("patient_birth_date")
        try:
            born = date(int(birth[:4]), int(birth[4:6]), int(birth[6:])) if birth else None
        except ValueError:
            born = None
        data = PatientInput(family=family or "Unknown", given=given.replace("^", " ").strip(), mrn=mrn,
                            mrn_system=self.dicom_system(header.get("patient_issuer")),
                            sex=header.get("patient_sex") or "unknown", birth_date=born)
        try:
            with s.begin_nested():  # a savepoint: losing the race must not spoil the caller's unit of work
                return self.register(s, data, actor)
        except DuplicateMrn:
            winner = self.find_dicom(s, header)
            if winner is None:
                raise
            return winner
        except PatientInvalid as exc:
            raise Invalid(f"cannot register the DICOM patient: {exc}") from exc

    def _check_mrn_free(self, repo: PatientRepository, values: dict[str, Any], patient_id: str | None) -> None:
        if values.get("mrn"):
            other = repo.by_mrn(values["mrn"], values["mrn_system"])
            if other is not None and other.id != patient_id:
                raise DuplicateMrn()
