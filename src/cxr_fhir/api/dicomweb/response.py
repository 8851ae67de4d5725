"""The Store Instances Response (PS3.18 §10.5.3, Table 10.5.3-3) in application/dicom+json
(PS3.18 Annex F): what was stored, what failed and why, and the HTTP status the standard gives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DICOM_JSON = "application/dicom+json"
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"


@dataclass(frozen=True)
class Instance:
    """How one part of the request ended. ``failure`` None: stored (or already stored: the same
    SOP Instance UID is one study, and the standard has no warning for it, so it is a success)."""

    part: int
    sop_class: str | None
    sop_instance: str | None
    study_uid: str | None
    series_uid: str | None
    failure: int | None = None
    code: str = "stored"  # stored | duplicate | the refusal code (imaging/dicom_status.py)
    reason: str | None = None  # for people: the audit trail and the log, never the response
    study_id: str | None = None  # the ImagingStudy it became
    retry_after_s: int | None = None  # the service was busy: when trying again makes sense


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _url(value: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]}


def _stored(item: Instance, base: str) -> dict[str, Any]:
    out = {REFERENCED_SOP_CLASS: _uid(item.sop_class or ""), REFERENCED_SOP_INSTANCE: _uid(item.sop_instance or "")}
    if item.study_uid and item.series_uid and item.sop_instance:
        out[RETRIEVE_URL] = _url(f"{base}/studies/{item.study_uid}/series/{item.series_uid}"
                                 f"/instances/{item.sop_instance}")
    return out


def _failed(item: Instance) -> dict[str, Any]:
    """Referenced SOP Class and Instance UIDs are Type 1 in the Failed SOP Sequence, but a part that
    is not DICOM has none: they are then left out rather than made up."""
    out: dict[str, Any] = {}
    if item.sop_class:
        out[REFERENCED_SOP_CLASS] = _uid(item.sop_class)
    if item.sop_instance:
        out[REFERENCED_SOP_INSTANCE] = _uid(item.sop_instance)
    out[FAILURE_REASON] = {"vr": "US", "Value": [item.failure]}
    return out


def body(results: list[Instance], base: str, study_uid: str | None) -> dict[str, Any]:
    """``base``: the DICOMweb root URL; ``study_uid``: the study of the request's path, if any.
    The top Retrieve URL names the study when every stored instance belongs to one."""
    stored = [r for r in results if r.failure is None]
    failed = [r for r in results if r.failure is not None]
    studies = {r.study_uid for r in stored if r.study_uid}
    out: dict[str, Any] = {}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if target and stored:
        out[RETRIEVE_URL] = _url(f"{base}/studies/{target}")
    if failed:
        out[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_failed(r) for r in failed]}
    if stored:
        out[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_stored(r, base) for r in stored]}
    return out


def status(results: list[Instance]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored; 202 some stored, some failed; 409 none stored; 503
    none stored, each because the server was busy (out of resources: trying again later helps)."""
    stored = sum(r.failure is None for r in results)
    if stored == len(results):
        return 200
    if stored:
        return 202
    return 503 if all(r.retry_after_s is not None for r in results) else 409
