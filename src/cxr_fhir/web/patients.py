"""Patients: search as you type, filters, pages; register and edit; the patient's own page with
upload and diagnosis history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from ..domain.errors import Gone, NotFound, VersionConflict
from ..domain.text import has_control
from ..records.tables import Patient
from ..services.patients import GENDERS, PatientInput, PatientInvalid
from ..storage.db import reading, writing
from ..storage.repositories import PatientRepository
from .common import ServicesDep, audit_read, page, services, user
from .guards import login_required
from .queries import er_areas, patient_studies

PAGE_SIZE = 20
FIELDS = ("family", "given", "mrn", "birth_date", "sex", "er_area", "triage_level", "attending_doctor", "notes")
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


def parse_form(form: dict[str, str]) -> tuple[PatientInput | None, dict[str, str]]:
    """The typed input, or the messages for what could not even be parsed."""
    errors: dict[str, str] = {}
    birth: date | None = None
    if (raw := (form.get("birth_date") or "").strip()):
        try:
            birth = date.fromisoformat(raw)
        except ValueError:
            errors["birth_date"] = "use the date picker or YYYY-MM-DD"
    level: int | None = None
    if (raw := (form.get("triage_level") or "").strip()):
        try:
            level = int(raw)
        except ValueError:
            errors["triage_level"] = "ESI level 1 to 5"
    if not (form.get("mrn") or "").strip():
        errors["mrn"] = "required (use a temporary MRN for an unidentified patient)"
    if not (form.get("family") or "").strip():
        errors["family"] = "required"
    if errors:
        return None, errors
    return PatientInput(family=form.get("family", ""), given=form.get("given", ""), mrn=form.get("mrn"),
                        birth_date=birth, sex=form.get("sex") or "unknown", er_area=form.get("er_area") or None,
                        triage_level=level, attending_doctor=form.get("attending_doctor") or None,
                        notes=form.get("notes") or None), {}


def _values(patient: Patient) -> dict[str, str]:
    return {k: "" if getattr(patient, k) is None else str(getattr(patient, k)) for k in FIELDS}


def _get_patient(request: Request, patient_id: str) -> Patient:
    with reading(services(request).engine) as s:
        try:
            return PatientRepository(s).get(patient_id)
        except (NotFound, Gone) as exc:
            raise NotFoundException() from exc


class PatientController(Controller):
    path = "/patients"
    guards = [login_required]

    @get("/", sync_to_thread=True)
    def search(self, request: Request, services: ServicesDep, q: FromQuery[str] = "", er_area: FromQuery[str] = "",
               triage: FromQuery[str] = "", page_no: FromQuery[int] = 1) -> Template:
        svc = services
        level = int(triage) if triage.isdecimal() and 1 <= int(triage) <= 5 else None
        page_no = min(max(1, page_no), 10**6)  # beyond any list; keeps the offset a database integer
        rows: Sequence[Patient]
        if has_control(q + er_area):
            # No name or MRN holds one (registration refuses them); SQLite would end the text at U+0000
            # (matching everyone) and PostgreSQL refuses it outright.
            rows, total = [], 0
        else:
            with reading(svc.engine) as s:
                rows, total = PatientRepository(s).search(q.strip()[:100], er_area or None, level,
                                                          offset=(page_no - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        audit_read(request, "Patient", None, subtype="search",
                   detail=f"patient search, {total} match(es)")  # never the typed text (names, MRNs)
        pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
        ctx: dict[str, Any] = dict(patients=rows, total=total, q=q, er_area=er_area, triage=triage, page_no=page_no,
                                   pages=pages, areas=er_areas(svc.engine))
        if request.headers.get("hx-request") == "true" and request.headers.get("hx-target") == "patient-results":
            return page(request, "partials/patient_results.html", **ctx)
        return page(request, "patients.html", **ctx)

    @get("/new", sync_to_thread=False)
    def new_form(self, request: Request) -> Template:
        return page(request, "patient_form.html", patient=None, values={"sex": "unknown"}, errors={},
                    genders=GENDERS, version=None)

    @post("/new", sync_to_thread=True)
    def register(self, request: Request, services: ServicesDep, data: Form) -> Template | Redirect:
        svc = services
        values = {k: data.get(k, "") for k in FIELDS}
        parsed, errors = parse_form(data)
        if parsed is not None:
            try:
                with writing(svc.engine) as s:
                    patient = svc.patients.register(s, parsed, actor=user(request).username)
                return Redirect(f"/patients/{patient.id}", status_code=303)
            except PatientInvalid as exc:
                errors = exc.errors
        return page(request, "patient_form.html", status_code=422, patient=None, values=values, errors=errors,
                    genders=GENDERS, version=None)

    @get("/{patient_id:str}", sync_to_thread=True)
    def detail(self, request: Request, services: ServicesDep, patient_id: FromPath[str]) -> Template:
        svc = services
        patient = _get_patient(request, patient_id)
        history = patient_studies(svc.engine, patient)
        audit_read(request, "Patient", patient.id)
        return page(request, "patient.html", patient=patient, history=history,
                    models_ready=svc.models is not None, max_upload_mb=svc.settings.max_upload_bytes // 2**20)

    @get("/{patient_id:str}/history", sync_to_thread=True)
    def history(self, request: Request, services: ServicesDep, patient_id: FromPath[str]) -> Template:
        svc = services
        patient = _get_patient(request, patient_id)
        audit_read(request, "Patient", patient.id, detail="diagnosis history")
        return page(request, "partials/history.html", patient=patient, history=patient_studies(svc.engine, patient))

    @get("/{patient_id:str}/edit", sync_to_thread=True)
    def edit_form(self, request: Request, patient_id: FromPath[str]) -> Template:
        patient = _get_patient(request, patient_id)
        audit_read(request, "Patient", patient.id, detail="edit form")
        return page(request, "patient_form.html", patient=patient, values=_values(patient), errors={},
                    genders=GENDERS, version=patient.version_id)

    @post("/{patient_id:str}/edit", sync_to_thread=True)
    def update(self, request: Request, services: ServicesDep, patient_id: FromPath[str],
               data: Form) -> Template | Redirect:
        svc = services
        patient = _get_patient(request, patient_id)
        values = {k: data.get(k, "") for k in FIELDS}
        raw_version = (data.get("version") or "").strip()
        version = int(raw_version) if raw_version.isdecimal() and len(raw_version) < 10 else None
        parsed, errors = parse_form(data)
        if raw_version and version is None:
            # The hidden version is the edit's concurrency check: without it the edit would overwrite
            # whatever is stored now, so a broken one refuses the edit rather than being dropped.
            parsed, errors = None, {**errors, "_form": "This form is out of date; reload the page and edit again."}
        if parsed is not None:
            try:
                with writing(svc.engine) as s:
                    svc.patients.update(s, patient.id, parsed, actor=user(request).username,
                                        expected_version=version)
                return Redirect(f"/patients/{patient.id}", status_code=303)
            except PatientInvalid as exc:
                errors = exc.errors
            except VersionConflict:
                errors = {"_form": "Someone else changed this patient while you were editing. Your changes are "
                                   "still in the form; reload the page to see theirs."}
        return page(request, "patient_form.html", status_code=422, patient=patient, values=values, errors=errors,
                    genders=GENDERS, version=version)
