"""One STOW-RS Store Transaction (PS3.18 §10.5): each part becomes a study exactly as an upload
does (AnalysisService.upload, the patient from the DICOM header), or a failure with the DICOM
FailureReason of the one refusal table (imaging/dicom_status.py). Nothing is stored for a refused
instance; each instance, stored or refused, is an audit event of its own."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pydicom
from sqlalchemy.exc import OperationalError

from ...domain.errors import CxrError, Refused, TooCostly, Unavailable
from ...imaging.dicom_status import refusal_status, sop_class_supported
from ...services.container import Services
from .multipart import DICOM, Part
from .response import Instance

log = logging.getLogger("cxr_fhir.dicomweb")
DB_RETRY_AFTER_S = 5  # the database failed under one instance: as the FHIR API answers it (503)

Audit = Callable[[Instance], None]


def _header(data: bytes) -> pydicom.Dataset | None:
    """The header of a Part 10 instance (no pixels read), or None when the bytes are not DICOM."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # pydicom raises many kinds on garbage; every one means "cannot understand"
        return None


def _uid(ds: pydicom.Dataset, keyword: str, meta: str | None = None) -> str | None:
    value = ds.get(keyword)
    if not value and meta and "file_meta" in ds:
        value = ds.file_meta.get(meta)
    text = str(value).strip() if value else ""
    return text[:64] or None


def _refused(base: Instance, code: str, reason: str, retry_after_s: int | None = None) -> Instance:
    return Instance(base.part, base.sop_class, base.sop_instance, base.study_uid, base.series_uid,
                    failure=refusal_status(code), code=code, reason=reason, retry_after_s=retry_after_s)


def _checked(part: Part, max_bytes: int, path_study: str | None) -> tuple[Instance, bool]:
    """The part named by its header, and whether it may go on to the upload (else it is refused)."""
    blank = Instance(part.index, None, None, None, None)
    if part.content_type != DICOM:
        return _refused(blank, "unsupported-media-type", f"part {part.index} is {part.content_type}, "
                                                         f"not {DICOM}"), False
    if len(part.data) > max_bytes:
        return _refused(blank, "instance-too-large", f"the instance is {len(part.data)} bytes, over the "
                                                     f"{max_bytes} this node takes"), False
    ds = _header(part.data)
    if ds is None:
        return _refused(blank, "corrupt", "the part is not a DICOM Part 10 instance"), False
    named = Instance(part.index, _uid(ds, "SOPClassUID", "MediaStorageSOPClassUID"),
                     _uid(ds, "SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                     _uid(ds, "StudyInstanceUID"), _uid(ds, "SeriesInstanceUID"))
    if not sop_class_supported(named.sop_class):
        return _refused(named, "sop-class-not-supported", f"SOP class {named.sop_class} is not a chest "
                                                          "radiograph class this node stores"), False
    if path_study and named.study_uid != path_study:
        return _refused(named, "study-uid-mismatch", f"the instance's StudyInstanceUID {named.study_uid} "
                                                     f"is not the study of the request, {path_study}"), False
    return named, True


def store_one(services: Services, part: Part, actor: str, path_study: str | None) -> Instance:
    named, go_on = _checked(part, services.settings.dicom_max_instance_bytes, path_study)
    if not go_on:
        return named
    try:
        uploaded = services.analysis().upload(None, part.data, None, actor)
    except Refused as exc:  # ImageRejected and its kin: nothing was stored
        return _refused(named, exc.code, exc.reason)
    except Unavailable as exc:  # Saturated (the queue is full) or the image store: nothing stored
        return _refused(named, "busy", exc.message, exc.retry_after_s)
    except TooCostly as exc:  # a query past its time limit: a passing state, the sender may try again
        return _refused(named, "busy", exc.message, DB_RETRY_AFTER_S)
    except OperationalError:
        log.warning("database error while storing an instance", extra={"part": part.index})
        return _refused(named, "busy", "the database is unavailable", DB_RETRY_AFTER_S)
    except CxrError as exc:  # the patient in the header cannot be filed (an invalid identifier ...)
        return _refused(named, "invalid-header", exc.message)
    except Exception:  # one instance's fault must not lose the others
        log.exception("instance not stored", extra={"part": part.index})
        return _refused(named, "processing-failure", "internal error; it has been logged")
    study = uploaded.study
    return Instance(part.index, study.sop_class_uid or named.sop_class, study.sop_instance_uid,
                    study.study_uid, study.series_uid, code="duplicate" if uploaded.duplicate else "stored",
                    study_id=study.id)


def store_all(services: Services, parts: list[Part], actor: str, path_study: str | None,
              audit: Audit) -> list[Instance]:
    """Each part in order, each audited as soon as it has ended (so a crash loses no record of
    what was already stored)."""
    results = []
    for part in parts:
        result = store_one(services, part, actor, path_study)
        audit(result)
        log.info("stow-rs instance", extra={"part": part.index, "code": result.code, "study": result.study_id,
                                            "failure": f"0x{result.failure:04X}" if result.failure else None})
        results.append(result)
    return results

