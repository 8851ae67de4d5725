"""Upload, the result view, the images behind them, and the doctor's decisions on a report."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Template

from ..domain.errors import Gone, NotFound, Unavailable, VersionConflict
from ..domain.findings import FINDING_NAMES
from ..imaging import ImageRejected
from ..records.tables import Report
from ..services.queue import Saturated
from ..services.reports import ReportStateError
from ..storage.db import reading, writing
from ..storage.repositories import PatientRepository
from .common import ServicesDep, audit_read, page, services, user
from .delivery import delivery_context
from .guards import login_required
from .images import FULL, THUMB, Renditions
from .queries import StudyRow, study_row

log = logging.getLogger("cxr_fhir.web")
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
MAX_FILES = 10
# Box and legend colours, one per finding, chosen to stay distinct on a grey radiograph.
PALETTE = ["#ff4d4d", "#ffb000", "#00c853", "#2196f3", "#e040fb", "#00e5ff", "#ff6e40", "#c6ff00",
           "#ff4081", "#7c4dff", "#64ffda", "#ffd740", "#ff9100", "#18ffff"]
COLOURS = dict(zip(FINDING_NAMES, PALETTE, strict=True))


def _renditions(request: Request) -> Renditions:
    state = request.app.state
    if "renditions" not in state:
        svc = services(request)
        state.renditions = Renditions(svc.images, svc.settings.max_image_pixels)
    return state.renditions


def _row(request: Request, study_id: str, include_deleted: bool = True) -> StudyRow:
    row = study_row(services(request).engine, study_id)
    if row is None or row.patient.deleted_at is not None or (row.study.deleted_at is not None and not include_deleted):
        raise NotFoundException()
    return row


def _png(data: bytes) -> Response:
    # Patient images: never kept by the browser either (shared ward workstations), like the pages.
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


class StudyController(Controller):
    guards = [login_required]

    @post("/patients/{patient_id:str}/studies", request_max_body_size=None)
    async def upload(self, request: Request, services: ServicesDep, patient_id: FromPath[str]) -> Template:
        svc = services
        limit = svc.settings.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdecimal() and int(declared) > limit * MAX_FILES + 2**20:
            # More than ten files at the limit could carry: refused before the body is read.
            return page(request, "partials/upload_results.html", status_code=413, patient_id=patient_id,
                        colours=COLOURS, results=[{"filename": "", "error": f"The upload is too large: at most "
                                                   f"{MAX_FILES} files of {limit // 2**20} MB each."}])
        if not await anyio.to_thread.run_sync(_patient_exists, svc.engine, patient_id):
            raise NotFoundException()  # before anything else: no upload page answers for nobody
        form = await request.form()
        files = [f for f in form.getall("files") if isinstance(f, UploadFile)] if "files" in form else []
        results: list[dict[str, Any]] = []
        if not files:
            results.append({"filename": "", "error": "Choose or drop at least one X-ray file."})
        if svc.models is None:
            files, results = [], [{"filename": "", "error": "The AI models are not loaded: the image cannot be "
                                                            "analysed now. Ask an administrator (see /ready)."}]
        analysis = svc.analysis() if svc.models is not None else None
        for f in files[:MAX_FILES]:
            name = (f.filename or "upload")[:255]
            data = await f.read()
            if len(data) > limit:
                results.append({"filename": name, "error": f"the file is larger than {limit // 2**20} MB",
                                "code": "too-large-upload"})
                continue
            assert analysis is not None  # no files are left to read when the models are not loaded
            try:
                up = await anyio.to_thread.run_sync(analysis.upload, patient_id, data, name, user(request).username)
            except ImageRejected as exc:
                results.append({"filename": name, "error": exc.reason, "code": exc.code})
                continue
            except Saturated as exc:  # nothing stored: the doctor can simply send it again
                results.append({"filename": name, "code": "busy",
                                "error": f"Not analysed now: the analysis queue is full. Try this file again in "
                                         f"about {exc.retry_after_s} s; nothing was stored."})
                continue
            except Unavailable as exc:
                results.append({"filename": name, "code": "busy",
                                "error": f"Not analysed now: {exc}. Try this file again shortly; nothing was stored."})
                continue
            except (NotFound, Gone) as exc:
                raise NotFoundException() from exc
            row = await anyio.to_thread.run_sync(study_row, svc.engine, up.study.id)
            results.append({"filename": name, "row": row})
        if len(files) > MAX_FILES:
            results.append({"filename": "", "error": f"Only the first {MAX_FILES} files were uploaded; "
                                                     "send the rest in another batch."})
        # The history below the upload box reloads itself on this event.
        return page(request, "partials/upload_results.html", status_code=_upload_status(svc, results),
                    headers={"HX-Trigger": "history-changed"}, results=results, patient_id=patient_id,
                    colours=COLOURS)

    @get("/studies/{study_id:str}", sync_to_thread=True)
    def result(self, request: Request, services: ServicesDep, study_id: FromPath[str]) -> Template:
        row = _row(request, study_id)
        audit_read(request, "Study", row.study.id, detail="result view")
        return page(request, "result.html", row=row, colours=COLOURS, all_findings=_all_findings(row),
                    model_info=getattr(services.models, "model_info", None),
                    **delivery_context(request, row.report.id if row.report else None))

    @get("/studies/{study_id:str}/image.png", sync_to_thread=True)
    def image(self, request: Request, study_id: FromPath[str], size: FromQuery[str] = "full") -> Response:
        row = _row(request, study_id)
        audit_read(request, "Study", row.study.id, subtype="read-image", detail=f"image {size}")
        return _png(_renditions(request).png(row.study.content_sha256, THUMB if size == "thumb" else FULL))

    @get("/studies/{study_id:str}/overlay/{finding:str}", sync_to_thread=True)
    def overlay(self, request: Request, services: ServicesDep, study_id: FromPath[str],
                finding: FromPath[str]) -> Response:
        row = _row(request, study_id)
        digest = (row.analysis.overlays if row.analysis else {}).get(finding)
        if digest is None:
            raise NotFoundException()
        audit_read(request, "Study", row.study.id, subtype="read-image", detail=f"heatmap {finding}")
        return _png(services.images.get(digest))

    @post("/reports/{report_id:str}/confirm", sync_to_thread=True)
    def confirm(self, request: Request, report_id: FromPath[str], data: Form) -> Template:
        return self._decide(request, report_id, data, "confirm")

    @post("/reports/{report_id:str}/amend", sync_to_thread=True)
    def amend(self, request: Request, report_id: FromPath[str], data: Form) -> Template:
        return self._decide(request, report_id, data, "amend")

    def _decide(self, request: Request, report_id: str, data: dict[str, str], action: str) -> Template:
        svc = services(request)
        with reading(svc.engine) as s:
            found = s.get(Report, report_id)
        if found is None or found.deleted_at is not None:
            raise NotFoundException()
        reports = svc.reports
        version = int(data["version"]) if (data.get("version") or "").isdecimal() else None
        conclusion = data.get("conclusion")
        error = None
        try:
            with writing(svc.engine) as s:
                if action == "confirm":
                    reports.confirm(s, report_id, user(request).username, conclusion=conclusion,
                                    expected_version=version)
                else:
                    reports.amend(s, report_id, conclusion or "", user(request).username, expected_version=version)
        except ReportStateError as exc:
            error = str(exc).capitalize() + "."
        except VersionConflict:
            error = "Someone else changed this report meanwhile; reload the page to see the current text."
        except (NotFound, Gone) as exc:
            raise NotFoundException() from exc
        row = _row(request, found.study_id)
        # On an error the doctor's text stays in the box (nothing typed is lost).
        return page(request, "partials/report.html", status_code=200 if error is None else 409, row=row,
                    error=error, draft=conclusion if error else None)

    @post("/studies/{study_id:str}/delete", sync_to_thread=True)
    def delete(self, request: Request, services: ServicesDep, study_id: FromPath[str]) -> Template:
        svc = services
        row = _row(request, study_id, include_deleted=False)
        with writing(svc.engine) as s:
            svc.studies.delete(s, row.study.id, user(request).username)
        return page(request, "partials/deleted.html", row=row)


def _patient_exists(engine: Any, patient_id: str) -> bool:
    with reading(engine) as s:
        try:
            PatientRepository(s).get(patient_id)
        except (NotFound, Gone):
            return False
    return True


def _upload_status(svc: Any, results: list[dict[str, Any]]) -> int:
    """200 when any file was analysed; otherwise why nothing was (the page shows each message)."""
    if any(r.get("row") for r in results):
        return 200
    codes = {r.get("code") for r in results}
    if svc.models is None or "busy" in codes:
        return 503
    return 413 if "too-large-upload" in codes else 422


def _all_findings(row: StudyRow) -> list[dict[str, Any]]:
    if row.analysis is None:
        return []
    th = row.analysis.thresholds
    items = [{"finding": k, "probability": p, "threshold": th.get(k, 0.5), "present": p >= th.get(k, 0.5)}
             for k, p in row.analysis.probabilities.items()]
    return sorted(items, key=lambda i: -i["probability"])
