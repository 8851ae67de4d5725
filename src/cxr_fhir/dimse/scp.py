"""The DICOM Storage SCP: C-ECHO, and C-STORE of chest films, each filed exactly as an upload.

Built around the one Services container: every instance goes through AnalysisService.upload
(the same validation, refusals, idempotency on SOPInstanceUID and patient matching as the pages
and the FHIR API), and every decision is audited. A fault in one association is answered with a
failure status and logged by id; it never stops the listener.

Programmatic use (tests, `cxr-fhir dicom listen`, `cxr-fhir serve` with CXR_DICOM_LISTEN):

    scp = StorageSCP(services)          # AE title, host, port and callers from services.settings
    scp.start()                         # returns once listening; scp.port is the bound port
    ...
    scp.stop()
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy.exc import SQLAlchemyError

from ..domain.errors import CxrError
from ..security import audit
from ..storage.db import writing
from . import statuses
from .callers import Caller, is_allowed, parse_callers

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

    from ..services.container import Services

log = logging.getLogger("cxr_fhir.dimse")

# The storage SOP classes we take: the radiographs, and Secondary Capture (single and
# multi-frame, so that a multi-frame object is refused with its reason, not at negotiation).
STORAGE_CLASSES: dict[str, UID] = {
    "Digital X-Ray Image Storage - For Presentation": UID("1.2.840.10008.5.1.4.1.1.1.1"),
    "Digital X-Ray Image Storage - For Processing": UID("1.2.840.10008.5.1.4.1.1.1.1.1"),
    "Computed Radiography Image Storage": UID("1.2.840.10008.5.1.4.1.1.1"),
    "Secondary Capture Image Storage": UID("1.2.840.10008.5.1.4.1.1.7"),
    "Multi-frame Grayscale Byte Secondary Capture Image Storage": UID("1.2.840.10008.5.1.4.1.1.7.2"),
    "Multi-frame Grayscale Word Secondary Capture Image Storage": UID("1.2.840.10008.5.1.4.1.1.7.3"),
}
# Every syntax the decoders installed here read (pydicom + pylibjpeg-libjpeg, pyjpegls, openjpeg).
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
]
VERIFICATION = UID("1.2.840.10008.1.1")  # C-ECHO
# A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised.
REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)
REJECT_NOT_US = (0x01, 0x01, 0x07)  # ... called AE title not recognised


@dataclass(frozen=True)
class Peer:
    ae_title: str
    address: str | None

    @property
    def actor(self) -> str:
        return f"dicom:{self.ae_title}"


def _peer(event: evt.Event) -> Peer:
    requestor = event.assoc.requestor
    # Before negotiation the calling AE title is only in the A-ASSOCIATE-RQ primitive.
    primitive = requestor.primitive
    title = primitive.calling_ae_title if primitive is not None else requestor.ae_title
    return Peer(str(title or "").strip(), requestor.address or None)


class StorageSCP:
    """One listening AE. ``ae_title``, ``host``, ``port``, ``allowed_callers`` and
    ``max_instance_bytes`` default to the settings; ``port`` 0 takes a free port (see ``.port``)."""

    def __init__(self, services: Services, *, ae_title: str | None = None, host: str | None = None,
                 port: int | None = None, allowed_callers: str | None = None,
                 max_instance_bytes: int | None = None):
        settings = services.settings
        self.services = services
        self.ae_title = ae_title or settings.dicom_ae_title
        self.host = host or settings.dicom_host
        self.port = settings.dicom_port if port is None else port
        self.callers: tuple[Caller, ...] = parse_callers(
            settings.dicom_allowed_callers if allowed_callers is None else allowed_callers)
        self.max_instance_bytes = max_instance_bytes or settings.dicom_max_instance_bytes
        self._server: ThreadedAssociationServer | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> StorageSCP:
        """Listen in background threads (one per association); returns once bound."""
        if self._server is not None:
            return self
        # The dataset of each C-STORE is spooled to a temporary file, not held in memory, so its
        # size is checked before anything reads it (process-wide pynetdicom switch; we are the
        # only C-STORE receiver in the process).
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # checked (and audited) in _on_requested; this is the backstop
        ae.maximum_associations = 16
        ae.network_timeout = ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.add_supported_context(VERIFICATION)
        for sop_class in STORAGE_CLASSES.values():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        handlers: list[Any] = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        assert server is not None  # non-blocking start_server always returns the running server
        self._server = server
        self.port = int(server.server_address[1])
        log.info("DICOM storage SCP listening", extra={"ae_title": self.ae_title, "port": self.port,
                                                        "callers": len(self.callers)})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("DICOM storage SCP stopped", extra={"ae_title": self.ae_title})

    def serve_until(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (the `cxr-fhir dicom listen` command's loop)."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- association ---------------------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        """Before negotiation: a caller we were not told to trust, or an association meant for
        another AE title, is rejected, and audited before the peer hears the rejection."""
        peer = _peer(event)
        primitive = event.assoc.requestor.primitive
        called = str(primitive.called_ae_title if primitive is not None else "").strip()
        if not is_allowed(self.callers, peer.ae_title, peer.address):
            self._reject(event, peer, REJECT_UNKNOWN_CALLER, "calling AE title not recognised")
        elif called != self.ae_title.strip():
            self._reject(event, peer, REJECT_NOT_US, "called AE title not recognised")

    def _reject(self, event: evt.Event, peer: Peer, reason: tuple[int, int, int], why: str) -> None:
        log.warning("DICOM association rejected", extra={"ae_title": peer.ae_title, "address": peer.address,
                                                         "reason": why})
        self._audit(peer, action="E", subtype="dicom-association", outcome="4",
                    detail=f"association rejected: {why}")
        event.assoc.acse.send_reject(*reason)
        event.assoc.kill()  # as pynetdicom's own rejections: waits until the A-ASSOCIATE-RJ is sent

    def _on_rejected(self, event: evt.Event) -> None:
        """Rejections pynetdicom makes itself (association limit, no acceptable presentation context)."""
        peer = _peer(event)
        self._audit(peer, action="E", subtype="dicom-association", outcome="4",
                    detail="association rejected by the DICOM service")

    def _on_echo(self, event: evt.Event) -> int:
        return statuses.SUCCESS

    # -- C-STORE ---------------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> Dataset:
        peer = _peer(event)
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "") if isinstance(request, C_STORE) else ""
        try:
            return self._store(event, peer, sop_uid)
        except Exception as exc:  # one instance's fault is answered, never raised into the listener
            log.exception("C-STORE failed", extra={"sop_instance_uid": sop_uid, "error": type(exc).__name__})
            self._audit(peer, action="C", subtype="dicom-store", outcome="8",
                        detail=f"0x0110 processing failure: {type(exc).__name__} (SOPInstanceUID={sop_uid})")
            return _response(statuses.PROCESSING_FAILURE, "processing failure; see the service log")

    def _store(self, event: evt.Event, peer: Peer, sop_uid: str) -> Dataset:
        path = event.dataset_path
        size = path.stat().st_size
        if size > self.max_instance_bytes:  # refused before a byte of it is read
            return self._refuse(peer, sop_uid, statuses.TOO_LARGE, "instance-too-large",
                                f"instance of {size} bytes exceeds the limit of {self.max_instance_bytes}")
        services = self.services
        if services.models is None:
            return self._refuse(peer, sop_uid, statuses.OUT_OF_RESOURCES, "busy",
                                "analysis unavailable: the models are not loaded")
        data = path.read_bytes()
        try:
            uploaded = services.analysis().upload(None, data, filename=None, actor=peer.actor)
        except CxrError as exc:
            status, code = statuses.for_refusal(exc)
            return self._refuse(peer, sop_uid, status, code, str(exc))
        study = uploaded.study
        log.info("C-STORE filed", extra={"study": study.id, "sop_instance_uid": sop_uid,
                                         "duplicate": uploaded.duplicate, "status": study.status})
        # The ImagingStudy as the entity: the event is then found in the patient's access history.
        self._audit(peer, action="C", subtype="dicom-store", outcome="0", entity_type="ImagingStudy",
                    entity_id=study.id, detail=f"SOPInstanceUID={sop_uid}"
                    + (" duplicate: already filed" if uploaded.duplicate else ""))
        return _response(statuses.SUCCESS)

    def _refuse(self, peer: Peer, sop_uid: str, status: int, code: str, reason: str) -> Dataset:
        log.warning("C-STORE refused", extra={"sop_instance_uid": sop_uid, "status": f"0x{status:04X}",
                                              "code": code})
        self._audit(peer, action="C", subtype="dicom-store", outcome="4",
                    detail=f"0x{status:04X} {code}: {reason} (SOPInstanceUID={sop_uid})")
        return _response(status, reason)

    def _audit(self, peer: Peer, *, action: str, subtype: str, outcome: str, entity_type: str | None = None,
               entity_id: str | None = None, detail: str | None = None) -> None:
        try:
            with writing(self.services.engine) as s:
                audit.record(s, action=action, subtype=subtype, agent_type="client", agent_id=peer.actor,
                             outcome=outcome, entity_type=entity_type, entity_id=entity_id,
                             source_ip=peer.address, detail=detail)
        except SQLAlchemyError:  # the database is down: the instance failed for the same reason
            log.error("audit event not recorded: database unavailable", extra={"subtype": subtype})


def _response(status: int, reason: str | None = None) -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    if reason and status != statuses.SUCCESS:
        rsp.ErrorComment = statuses.comment(reason)
    return rsp


def describe(scp: StorageSCP) -> dict[str, Any]:
    """What the SCP is, for the start-up line of `cxr-fhir dicom listen` (no PHI)."""
    return {"ae_title": scp.ae_title, "host": scp.host, "port": scp.port,
            "callers": [c.ae_title + (f"@{c.address}" if c.address else "") for c in scp.callers],
            "max_instance_bytes": scp.max_instance_bytes}
