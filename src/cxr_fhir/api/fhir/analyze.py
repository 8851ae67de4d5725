"""ImagingStudy/$analyze: one X-ray in, the stored study, findings and preliminary report out."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy.exc import OperationalError

from ...domain.errors import Refused, Unavailable
from ...imaging.loader import sniff
from ...services.container import Services
from ...storage.db import reading
from ...storage.fhir import store
from . import errors

OPERATION_ID = "ImagingStudy-analyze"
OPERATION_URL = f"urn:cxr-fhir:OperationDefinition/{OPERATION_ID}"
IMAGE_TYPES = ("application/dicom", "image/png", "image/jpeg")

OPERATION_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition", "id": OPERATION_ID, "url": OPERATION_URL, "version": "1",
    "name": "Analyze", "title": "Analyse a chest X-ray", "status": "active", "kind": "operation",
    "description": "Runs the AI on one chest radiograph, stores the ImagingStudy, the findings (Observations) "
                   "and a preliminary DiagnosticReport, and returns them. The body is either a Parameters "
                   "resource or the raw image (Content-Type application/dicom, image/png or image/jpeg) with "
                   "?subject=Patient/<id>. A DICOM image without a subject is filed under the patient whose "
                   "MRN is its PatientID, who is registered if unknown.",
    "code": "analyze", "resource": ["ImagingStudy"], "system": False, "type": True, "instance": False,
    "affectsState": True,
    "parameter": [
        {"name": "subject", "use": "in", "min": 0, "max": "1", "type": "Reference",
         "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
         "documentation": "The patient; required unless the image is DICOM with a PatientID"},
        {"name": "image", "use": "in", "min": 1, "max": "1", "type": "Binary",
         "documentation": "The radiograph: contentType application/dicom, image/png or image/jpeg, base64 data"},
        {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Bundle",
         "documentation": "A collection Bundle: the DiagnosticReport, its Observations and the ImagingStudy"},
    ],
}


def from_parameters(body: Any) -> tuple[bytes, str | None]:
    """(image bytes, subject reference) from a Parameters resource."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise errors.bad_request("$analyze takes a Parameters resource or the raw image")
    given = body.get("parameter")
    params = {p["name"]: p for p in (given if isinstance(given, list) else [])
              if isinstance(p, dict) and isinstance(p.get("name"), str)}
    image = params.get("image", {}).get("resource")
    if not isinstance(image, dict) or image.get("resourceType") != "Binary":
        raise errors.bad_request("parameter 'image' must hold a Binary resource", ["Parameters.parameter"])
    if image.get("contentType") not in IMAGE_TYPES:
        raise errors.FhirError(415, f"image contentType {image.get('contentType')!r} is not one of "
                                    + ", ".join(IMAGE_TYPES), "not-supported")
    encoded = image.get("data", "")
    try:
        if not isinstance(encoded, str):
            raise ValueError(encoded)
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise errors.bad_request("Binary.data is not valid base64", ["Parameters.parameter.resource.data"]) from None
    reference = params.get("subject", {}).get("valueReference")
    subject = reference.get("reference") if isinstance(reference, dict) else reference
    if subject is not None and not isinstance(subject, str):
        raise errors.bad_request("parameter 'subject' must be a valueReference to Patient/<id>",
                                 ["Parameters.parameter.valueReference"])
    return data, subject


def _patient_for(services: Services, data: bytes, subject: str | None) -> str | None:
    """The subject's patient id; None when the DICOM film names its patient (the upload finds or
    registers them from the header it decodes anyway)."""
    if subject:
        parts = subject.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != "Patient":
            raise errors.bad_request(f"subject must be Patient/<id>, not {subject!r}")
        pid = parts[-1]
        with reading(services.engine) as s:
            store.read(s, "Patient", pid)  # 404 / 410 with an OperationOutcome
        return pid
    if sniff(data) != "application/dicom":
        raise errors.bad_request("a subject (Patient/<id>) is required unless the image is DICOM with a PatientID")
    return None


def run(services: Services, data: bytes, subject: str | None, actor: str, base: str
        ) -> tuple[dict[str, Any], dict[str, float]]:
    """(the collection Bundle, the analysis' stage timings in ms) or a FhirError."""
    if services.models is None:
        raise errors.FhirError(503, services.model_error or "the models are not loaded", "transient",
                               headers={"Retry-After": "30"})
    patient_id = _patient_for(services, data, subject)
    try:
        uploaded = services.analysis().upload(patient_id, data, None, actor)
    except Refused as exc:
        exc.where = ["Binary.data"]  # the operation's parameter holding the refused image
        raise
    except Unavailable as exc:
        exc.message = f"{exc.message}; nothing was stored, try again"
        raise
    if uploaded.report is None:
        raise errors.FhirError(500, f"ImagingStudy/{uploaded.study.id} was stored but its analysis failed: "
                                    f"{uploaded.study.failure_reason}", "exception")
    try:
        with reading(services.engine) as s:
            report = store.read(s, "DiagnosticReport", uploaded.report.id)
            keys = [r["reference"] for r in report.content.get("result", [])]
            rows = [report, *store.fetch(s, keys), store.read(s, "ImagingStudy", uploaded.study.id)]
    except OperationalError as exc:
        # The study and its report are committed: the generic database answer (503 + Retry-After)
        # would have the client upload again and make a second study. Say what exists instead.
        raise errors.FhirError(500, f"ImagingStudy/{uploaded.study.id} and DiagnosticReport/{uploaded.report.id} "
                                    "were stored, but reading them back failed; read them rather than uploading "
                                    "again", "exception") from exc
    return ({"resourceType": "Bundle", "type": "collection",
             "entry": [{"fullUrl": f"{base}/{r.resource_type}/{r.id}", "resource": r.content} for r in rows]},
            dict(uploaded.analysis.timings_ms if uploaded.analysis else {}))


def server_timing(stages_ms: dict[str, float], handler_ms: float) -> str:
    """The Server-Timing header: the model stages, and the whole handler (queue wait and storage included)."""
    parts = [f"{k.removesuffix('_ms')};dur={v:.1f}" for k, v in stages_ms.items() if k.endswith("_ms")]
    return ", ".join([*parts, f"handler;dur={handler_ms:.1f}"])
