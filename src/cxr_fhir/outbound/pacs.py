"""The PACS destination: per report version a DICOM SR (TID 1500) and a Secondary Capture of the
overlay, stored by C-STORE (DIMSE) or STOW-RS (DICOMweb).

Exactly once: the objects' SOP Instance UIDs are fixed per report version (dicom/uids.py), so a
retry after a lost answer stores the same instances again and the PACS keeps one of each. A new
report version (a confirmed, then amended report) is a new outbox row with new UIDs: the verified
SR goes next to the preliminary one and names it as its predecessor.

How an answer is read (PS3.4 Annex B.2.3, PS3.7 C.4.2.1.4, PS3.18 10.5.3):
- success (0x0000) and warnings (0xB000-0xBFFF: coerced, elements discarded): stored; the warning is
  kept in the row's summary.
- 0xA7xx "out of resources", 0x0213 resource limitation, 0x0110 processing failure, no answer, an
  association rejected or aborted, any network error: the same objects may well be stored later
  (TransientError); an association the PACS rejects is configuration (AE titles), like a refused
  EHR key, so it is retried too rather than dead-lettered at once.
- 0xA9xx "does not match SOP class", 0xCxxx "cannot understand", and any other failure (SOP class not
  supported, not authorised...): the PACS refuses these objects (PermanentError).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from sqlmodel import Session

from .. import imaging
from ..dicom.capture import secondary_capture
from ..dicom.sr import measurement_report
from ..domain.vocabulary import Destination, ReportStatus
from ..records.tables import OutboxDelivery
from ..settings import Settings
from ..storage.image_store import ImageStore
from .errors import AuthError, PermanentError, TransientError
from .rows import report_rows
from .sender import Sent

DICOM_MEDIA_TYPE = "application/dicom"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class PacsObjects:
    datasets: tuple[Dataset, ...]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def status_class(code: int) -> str:
    """A C-STORE status (or a STOW-RS FailureReason / WarningReason): success | warning | transient |
    permanent."""
    if code == 0x0000:
        return "success"
    if 0xB000 <= code <= 0xBFFF:
        return "warning"
    if 0xA700 <= code <= 0xA7FF or code in (0x0110, 0x0213):
        return "transient"
    return "permanent"  # 0xA9xx, 0xCxxx, 0x0122 SOP class not supported, 0x0124 not authorised ...


def to_bytes(ds: Dataset) -> bytes:
    """A Part 10 file (preamble, file meta) as STOW-RS and the tests read it."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class PacsSender:
    destination = Destination.PACS
    payload_name = "DICOM objects"

    def __init__(self, *, calling_ae: str, called_ae: str | None = None, host: str | None = None,
                 port: int | None = None, stow_url: str | None = None, timeout_s: float = 30.0,
                 not_for_diagnostic_use: bool = True):
        if not stow_url and not (called_ae and host and port):
            raise ValueError("the PACS needs an AE title, host and port, or a STOW-RS URL")
        self.calling_ae, self.called_ae, self.host, self.port = calling_ae, called_ae, host, port
        self.stow_url, self.timeout_s = stow_url, timeout_s
        self.not_for_diagnostic_use = not_for_diagnostic_use
        self.http: httpx.Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, not_for_diagnostic_use: bool) -> PacsSender:
        return cls(calling_ae=settings.dicom_ae_title, called_ae=settings.pacs_ae_title, host=settings.pacs_host,
                   port=settings.pacs_port, stow_url=settings.pacs_stow_url, timeout_s=settings.pacs_timeout_s,
                   not_for_diagnostic_use=not_for_diagnostic_use)

    # -- prepare: inside the claim's unit of work -------------------------------------------------
    def prepare(self, s: Session, images: ImageStore, row: OutboxDelivery) -> PacsObjects:
        rows = report_rows(s, row.report_id)
        if rows.study.media_type != DICOM_MEDIA_TYPE:
            raise PermanentError("the study did not come as DICOM: the PACS has no film to attach results to")
        if rows.report.version_id != row.report_version:
            # Only a cancellation is newer without a PACS row of its own (DICOM has no retraction):
            # the version queued here no longer exists as such and must not go out built from the new one.
            raise PermanentError(f"report version {row.report_version} was replaced by version "
                                 f"{rows.report.version_id} ({rows.report.status}), which the PACS is not sent")
        if rows.report.status == ReportStatus.CANCELLED:
            raise PermanentError("the report is cancelled: nothing to send to the PACS")
        data = images.get(rows.study.content_sha256)
        # The header only: the builders never read its pixels (dicom/source.py copies a header), and the
        # one image loader decodes them, once, for the Secondary Capture.
        source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        film = imaging.load(data)
        sr = measurement_report(rows.patient, rows.study, rows.analysis, rows.report, source,
                                not_for_diagnostic_use=self.not_for_diagnostic_use)
        sc = secondary_capture(rows.patient, rows.study, rows.analysis, rows.report, source, film)
        return PacsObjects((sr, sc))

    # -- send: outside any transaction ------------------------------------------------------------
    def send(self, payload: PacsObjects) -> Sent:
        statuses = self._stow(payload) if self.stow_url else self._c_store(payload)
        summary: dict[str, Any] = {"sop_instance_uids": payload.sop_instance_uids, "statuses": statuses}
        warnings = {uid: code for uid, code in statuses.items() if status_class(int(code, 16)) == "warning"}
        if warnings:
            summary["warnings"] = warnings
        return Sent(summary)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()

    # -- C-STORE ----------------------------------------------------------------------------------
    def _c_store(self, payload: PacsObjects) -> dict[str, str]:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout_s
        for sop_class, syntaxes in _contexts(payload.datasets).items():
            ae.add_requested_context(sop_class, syntaxes)
        assert self.host and self.port and self.called_ae  # __init__ checked it when there is no STOW URL
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        except OSError as exc:
            raise TransientError(f"network error: {type(exc).__name__}") from exc
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise TransientError(f"association with the PACS {why}", response={"association": why})
        statuses: dict[str, str] = {}
        try:
            for ds in payload.datasets:
                statuses[str(ds.SOPInstanceUID)] = _store_one(assoc, ds, statuses)
        finally:
            if assoc.is_established:
                assoc.release()
        return statuses

    # -- STOW-RS ----------------------------------------------------------------------------------
    def _stow(self, payload: PacsObjects) -> dict[str, str]:
        assert self.stow_url
        if self.http is None:
            self.http = httpx.Client(timeout=self.timeout_s, follow_redirects=False, headers={"User-Agent": "cxr-fhir"})
        boundary = uuid.uuid4().hex
        body = b"".join(f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode() + to_bytes(ds) + b"\r\n"
                        for ds in payload.datasets) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        try:
            response = self.http.post(self.stow_url.rstrip("/") + "/studies", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"network error: {type(exc).__name__}") from exc
        return _stow_statuses(response, payload)


def _contexts(datasets: tuple[Dataset, ...]) -> dict[str, list[str]]:
    """One presentation context per SOP class: the object's own transfer syntax, and for an
    uncompressed object both little-endian ones (pynetdicom re-encodes between them)."""
    wanted: dict[str, list[str]] = {}
    for ds in datasets:
        own = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ExplicitVRLittleEndian)
        syntaxes = list(UNCOMPRESSED) if own in UNCOMPRESSED else [own]
        for ts in syntaxes:
            if ts not in wanted.setdefault(str(ds.SOPClassUID), []):
                wanted[str(ds.SOPClassUID)].append(ts)
    return wanted


def _store_one(assoc: Association, ds: Dataset, statuses: dict[str, str]) -> str:
    """C-STORE one object; its status as 0xNNNN, or raise as the status says."""
    uid = str(ds.SOPInstanceUID)
    try:
        answer = assoc.send_c_store(ds)
    except ValueError as exc:  # no accepted presentation context for this SOP class / transfer syntax
        raise PermanentError(f"the PACS accepts no presentation context for SOP class {ds.SOPClassUID}",
                             response={"statuses": statuses}) from exc
    except RuntimeError as exc:  # the PACS ended the association between two objects
        raise TransientError("the association with the PACS ended before the C-STORE",
                             response={"statuses": statuses}) from exc
    if "Status" not in answer:
        raise TransientError("no C-STORE response from the PACS (timeout or abort)", response={"statuses": statuses})
    code = int(answer.Status)
    text = f"0x{code:04X}"
    kind = status_class(code)
    if kind in ("success", "warning"):
        return text
    response = {"statuses": {**statuses, uid: text}}
    comment = str(answer.get("ErrorComment", "") or "")[:200]
    reason = f"C-STORE of {uid} failed with status {text}" + (f" ({comment})" if comment else "")
    if kind == "transient":
        raise TransientError(reason, status=code, response=response)
    raise PermanentError(reason, status=code, response=response)


def _stow_statuses(response: httpx.Response, payload: PacsObjects) -> dict[str, str]:
    """Statuses per instance from a STOW-RS store-instances response (PS3.18 10.5.3)."""
    code = response.status_code
    if code in (401, 403):
        raise AuthError(f"HTTP {code} from the STOW-RS endpoint", code)
    if code in (408, 429) or code >= 500:
        raise TransientError(f"HTTP {code} from the STOW-RS endpoint", code)
    if code not in (200, 202, 409):
        raise PermanentError(f"HTTP {code} from the STOW-RS endpoint", code)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, list):  # some servers answer a one-element array
        body = body[0] if body else {}
    statuses = {uid: "0x0000" for uid in payload.sop_instance_uids}
    for item in (body.get("00081199") or {}).get("Value", []):  # ReferencedSOPSequence: stored ones
        uid = _value(item, "00081155")
        warning = _value(item, "00081196")
        if uid and warning is not None:
            statuses[uid] = f"0x{int(warning):04X}"
    failed = {(_value(i, "00081155") or "?"): int(_value(i, "00081197") or 0x0110)
              for i in (body.get("00081198") or {}).get("Value", [])}  # FailedSOPSequence
    if code == 409 and not failed:
        failed = {uid: 0xC000 for uid in payload.sop_instance_uids}
    if failed:
        statuses.update({uid: f"0x{reason:04X}" for uid, reason in failed.items()})
        reason_text = "STOW-RS refused " + ", ".join(f"{uid} (0x{r:04X})" for uid, r in failed.items())
        error = TransientError if all(status_class(r) == "transient" for r in failed.values()) else PermanentError
        raise error(reason_text, status=code, response={"http_status": code, "statuses": statuses})
    return statuses


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]
