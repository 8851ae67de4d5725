"""One upload, end to end: validate, store, analyse, report. Used by the web pages and FHIR $analyze.

Nothing is stored for a refused image. A stored study always has its file (the file is written
before its row), and ends either analysed, with its analysis and preliminary report, or failed,
with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydicom.uid import generate_uid
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..domain.errors import InvalidRequest, Unavailable
from ..domain.identity import name_mismatch
from ..domain.report import conclusion
from ..domain.triage import default_rules, triage
from ..domain.vocabulary import Destination, StudyStatus
from ..imaging import ImageRejected, XRayImage, load
from ..records.tables import Analysis, Report, Study
from ..records.types import utcnow
from ..storage.db import reading, writing
from ..storage.fhir import projection
from ..storage.image_store import ImageStore
from ..storage.repositories import PatientRepository, ReportRepository, StudyRepository
from .patients import PatientService
from .queue import InferenceQueue
from .reports import enqueue_deliveries

if TYPE_CHECKING:  # the models load only where they run, not wherever this module is imported
    from ..imaging.plausibility import GateVerdict
    from ..inference.pipeline import AnalysisResult, Pipeline

log = logging.getLogger("cxr_fhir.analysis")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # SOP class for images that did not come as DICOM


@dataclass(frozen=True)
class Assessment:
    """The models' result with the triage applied: everything a caller reports about one image."""

    result: AnalysisResult
    priority: str                 # routine | urgent | stat
    priority_reasons: list[str]
    # The pipeline's stage timings plus triage_ms; total_ms covers the pipeline and the triage.
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The plausibility gate: an atypical film is analysed but flagged "unusual film, read with care".
    unusual_film: bool = False
    plausibility: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The plain-data view: what `cxr-fhir analyze --json` prints (and the shapes storage keeps)."""
        r = self.result
        return {"probabilities": r.probabilities, "thresholds": r.thresholds,
                "top3": [f.as_dict() for f in r.top3], "boxes": [b.as_dict() for b in r.boxes],
                "priority": self.priority, "priority_reasons": self.priority_reasons,
                "unusual_film": self.unusual_film, "plausibility": self.plausibility,
                "model": r.model.as_dict(), "timings_ms": self.timings_ms}


def prioritise(result: AnalysisResult, thresholds: Mapping[str, float], image: XRayImage,
               rules: Mapping[str, Any] | None = None, verdict: GateVerdict | None = None) -> Assessment:
    """Apply the triage rules to a pipeline result. ``thresholds`` are the classifier's own
    (unrounded) operating thresholds, as the triage has always compared against them."""
    start = time.perf_counter()
    decided = triage(result.probabilities, thresholds, result.boxes, float(image.width * image.height),
                     rules if rules is not None else default_rules())
    triage_ms = (time.perf_counter() - start) * 1000
    timings = dict(result.timings_ms)
    timings["triage_ms"] = round(triage_ms, 1)
    if "total_ms" in timings:
        timings["total_ms"] = round(timings["total_ms"] + triage_ms, 1)
    return Assessment(result=result, priority=decided.priority, priority_reasons=list(decided.reasons),
                      timings_ms=timings, unusual_film=bool(verdict and verdict.unusual),
                      plausibility=verdict.score if verdict else None)


def assess(pipeline: Pipeline, image: XRayImage, *, check_plausible: bool = True, render_overlays: bool = True,
           rules: Mapping[str, Any] | None = None, verdict: GateVerdict | None = None) -> Assessment:
    """Run the models on one image, then the triage. Raises ImageRejected (plausibility gate).
    ``verdict``: the gate's, when the caller has already checked the image."""
    if check_plausible and verdict is None:
        verdict = pipeline.check_plausible(image)
    result = pipeline.run(image, check_plausible=False, render_overlays=render_overlays)
    return prioritise(result, pipeline.thresholds, image, rules, verdict)


@dataclass
class Uploaded:
    study: Study
    analysis: Analysis | None
    report: Report | None
    # The instance (its SOPInstanceUID) was already filed for this patient: this is that study,
    # and nothing new was stored. A modality resending, or two nodes sending one film, is one study.
    duplicate: bool = False


class _AlreadyFiled(Exception):
    """The study row lost the race for its SOPInstanceUID (the partial unique index)."""

    def __init__(self, sop_instance_uid: str):
        super().__init__(sop_instance_uid)
        self.sop_instance_uid = sop_instance_uid


class AnalysisService:
    def __init__(self, engine: Engine, images: ImageStore, pipeline: Pipeline, destinations: Collection[Destination],
                 max_image_pixels: int, queue: InferenceQueue | None = None,
                 patients: PatientService | None = None):
        self.engine, self.images, self.pipeline = engine, images, pipeline
        self.patients = patients
        self.destinations, self.max_image_pixels = tuple(destinations), max_image_pixels
        self.queue = queue or InferenceQueue(max_waiting=1_000_000)
        self.rules = default_rules()

    def upload(self, patient_id: str | None, data: bytes, filename: str | None, actor: str) -> Uploaded:
        """Raises ImageRejected (nothing stored), Saturated (queue full, nothing stored),
        Unavailable (image store or database failing, nothing half-written) or storage
        NotFound/Gone for the patient.

        ``patient_id`` None: the film is DICOM and names its patient (PatientID within its
        IssuerOfPatientID, see PatientService.dicom_system), who is found or registered in the same
        unit of work as the study; the image is decoded once, here.

        Idempotent on SOPInstanceUID: an instance already filed for the same patient returns that
        study (``duplicate``), before the queue, so a resend costs no analysis."""
        image = load(data, self.max_image_pixels)
        known = self._already_filed(patient_id, image.metadata)
        if known is not None:
            return known
        with self.queue.admitted():
            verdict = self.pipeline.check_plausible(image)
            try:
                study = self._store(patient_id, image, data, filename, actor)
            except _AlreadyFiled as lost:
                return self._winner(patient_id, image.metadata, lost.sop_instance_uid)
            try:
                return self._analyse(study, image, verdict)
            except Exception as exc:  # one image's failure must not take the service down
                log.exception("analysis failed", extra={"study": study.id})
                return Uploaded(self._mark_failed(study, f"analysis failed: {type(exc).__name__}"), None, None)

    @staticmethod
    def fail_interrupted(engine: Engine, older_than: timedelta) -> int:
        """Studies left queued or analysing by a process that died: mark them failed, visibly.
        Only those older than any analysis could take, so another instance's work is untouched."""
        cutoff = utcnow() - older_than
        with writing(engine) as s:
            stuck = s.exec(select(Study).where(col(Study.status).in_((StudyStatus.QUEUED, StudyStatus.ANALYZING)),
                                               col(Study.deleted_at).is_(None), Study.updated_at < cutoff)).all()
            for row in stuck:
                _fail(s, row.id, "interrupted: the service stopped during the analysis; upload the image again")
        if stuck:
            log.warning("interrupted analyses marked failed", extra={"count": len(stuck)})
        return len(stuck)

    def _analyse(self, study: Study, image: XRayImage, verdict: GateVerdict | None = None) -> Uploaded:
        assessed = assess(self.pipeline, image, check_plausible=False, rules=self.rules, verdict=verdict)
        result = assessed.result
        try:
            overlays = {k: self.images.put(png) for k, png in result.overlays.items()}
        except OSError:  # the overlays are part of the result: without them the study fails, visibly
            return Uploaded(self._mark_failed(study, "the image store cannot be written (overlays)"), None, None)
        with writing(self.engine) as s:
            analysis = Analysis(study_id=study.id, model_name=result.model.name,
                                model_version=result.model.version, manifest_sha256=result.model.manifest_sha256,
                                probabilities=result.probabilities, top3=[f.as_dict() for f in result.top3],
                                boxes=[b.as_dict() for b in result.boxes],
                                priority=assessed.priority, priority_reasons=assessed.priority_reasons,
                                thresholds=result.thresholds, overlays=overlays, timings_ms=assessed.timings_ms,
                                unusual_film=assessed.unusual_film, plausibility=assessed.plausibility)
            s.add(analysis)
            s.flush()
            report = ReportRepository(s).create(
                Report(study_id=study.id, analysis_id=analysis.id,
                       conclusion=conclusion(result.top3, assessed.priority, assessed.priority_reasons,
                                             unusual_film=assessed.unusual_film)),
                actor="system")
            enqueue_deliveries(s, report, self.destinations)
            study = StudyRepository(s).update(study.id, {"status": StudyStatus.ANALYZED}, actor="system")
            projection.study(s, study)
            projection.results(s, study, analysis, report)
        log.info("study analysed", extra={"study": study.id, "priority": assessed.priority,
                                          "ms": assessed.timings_ms.get("total_ms")})
        return Uploaded(study, analysis, report)

    def _already_filed(self, patient_id: str | None, header: dict[str, Any]) -> Uploaded | None:
        """The living study that already holds this instance for this patient, with its results.
        Another patient's instance is left to ``_store``, which refuses it (uid-conflict)."""
        uid = header.get("sop_instance_uid")
        if not uid:
            return None
        with reading(self.engine) as s:
            study = s.exec(select(Study).where(Study.sop_instance_uid == uid,
                                               col(Study.deleted_at).is_(None))).first()
            if study is None:
                return None
            if patient_id is None:
                owner = self.patients.find_dicom(s, header) if self.patients is not None else None
                patient_id = owner.id if owner is not None else None
            if study.patient_id != patient_id:
                return None
            analysis = s.exec(select(Analysis).where(Analysis.study_id == study.id)
                              .order_by(col(Analysis.created_at).desc())).first()
            report = ReportRepository(s).for_study(study.id)
        log.info("instance already filed", extra={"study": study.id})
        return Uploaded(study, analysis, report, duplicate=True)

    def _winner(self, patient_id: str | None, header: dict[str, Any], uid: str) -> Uploaded:
        """After losing the insert race: the study that won it (committed, so now visible)."""
        won = self._already_filed(patient_id, header)
        if won is not None:
            return won
        with reading(self.engine) as s:
            if s.exec(select(Study.id).where(Study.sop_instance_uid == uid,
                                             col(Study.deleted_at).is_(None))).first() is not None:
                raise ImageRejected("uid-conflict", f"the film's SOPInstanceUID {uid} belongs to another "
                                                    "patient's study; check the patient's identity")
        raise Unavailable("the instance was filed and removed meanwhile; send it again")

    def _mark_failed(self, study: Study, reason: str) -> Study:
        """Best effort: a study deleted meanwhile, or a database that is down, keeps its last state
        (a start-up sweep is to mark studies left 'analyzing' as failed)."""
        try:
            with writing(self.engine) as s:
                return _fail(s, study.id, reason)
        except Exception:
            log.exception("could not mark study failed", extra={"study": study.id})
            return study

    def _store(self, patient_id: str | None, image: XRayImage, data: bytes, filename: str | None,
               actor: str) -> Study:
        """The file first, then its row. Content-addressed files are never deleted here: another
        upload of the same bytes may already point at this one. A file whose row failed is garbage,
        harmless, and left to a sweep; a row without its file cannot happen."""
        md = image.metadata
        with writing(self.engine) as s:
            if patient_id is None:
                if self.patients is None:
                    raise InvalidRequest("a patient is required")
                patient_id = self.patients.from_dicom(s, md, actor).id
            patient = PatientRepository(s).get(patient_id)  # NotFound / Gone before anything is written
            _check_uids_belong_to(s, patient_id, md)
            warning = name_mismatch(md.get("patient_name"), patient.family, patient.given)
            try:
                digest = self.images.put(data)
            except OSError as exc:  # disk full, read-only, permissions: no file, so no row either
                log.error("image store write failed", extra={"error": type(exc).__name__})
                raise Unavailable(f"the image store cannot be written ({exc.strerror or type(exc).__name__})") \
                    from exc
            row = Study(
                patient_id=patient_id, content_sha256=digest, original_filename=(filename or "")[:255] or None,
                media_type=image.media_type, size_bytes=len(data),
                # PNG/JPEG uploads get DICOM UIDs of their own, so every study can be
                # identified (and conditionally created in the EHR) by its Study Instance UID.
                study_uid=md.get("study_uid") or generate_uid(), series_uid=md.get("series_uid") or generate_uid(),
                sop_instance_uid=md.get("sop_instance_uid") or generate_uid(),
                sop_class_uid=md.get("sop_class_uid") or SECONDARY_CAPTURE,
                accession_number=md.get("accession_number"),
                modality=md.get("modality") or "DX", view_position=md.get("view_position"),
                acquired_at=md.get("acquired_at"), width=image.width, height=image.height,
                status=StudyStatus.QUEUED, identity_warning=warning, uploaded_by=actor)
            try:
                with s.begin_nested():
                    study = StudyRepository(s).create(row, actor=actor)
            except IntegrityError:
                if not md.get("sop_instance_uid"):
                    raise
                # Another door filed this instance a moment ago (unique index among living studies).
                raise _AlreadyFiled(md["sop_instance_uid"]) from None
            projection.study(s, study)
            return study


def _check_uids_belong_to(s: Session, patient_id: str, header: dict[str, Any]) -> None:
    """A DICOM UID names one thing: a study, series or instance UID already filed under another
    patient's study is refused (the EHR and the PACS match studies on them)."""
    for column, key, label in ((Study.study_uid, "study_uid", "StudyInstanceUID"),
                               (Study.series_uid, "series_uid", "SeriesInstanceUID"),
                               (Study.sop_instance_uid, "sop_instance_uid", "SOPInstanceUID")):
        uid = header.get(key)
        if not uid:
            continue
        other = s.exec(select(Study.id).where(col(column) == uid, col(Study.patient_id) != patient_id,
                                              col(Study.deleted_at).is_(None)).limit(1)).first()
        if other is not None:
            raise ImageRejected("uid-conflict", f"the film's {label} {uid} belongs to another patient's study; "
                                                "check the patient's identity before sending it again")


def _fail(s: Session, study_id: str, reason: str) -> Study:
    """A study ends failed with its reason, in the API as on the pages."""
    changes = {"status": StudyStatus.FAILED, "failure_reason": reason}
    failed = StudyRepository(s).update(study_id, changes, actor="system")
    projection.study(s, failed)
    return failed


__all__ = ["AnalysisService", "Assessment", "ImageRejected", "Uploaded", "assess", "prioritise"]
