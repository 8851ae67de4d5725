"""The RIS destination: an HL7 v2.5.1 ORU^R01 per report version over MLLP, with its ACK.

MLLP (HL7 v2 Appendix C): each message is framed 0x0B <message> 0x1C 0x0D on a TCP connection;
the answer comes back framed the same way. One connection per message: a RIS that restarted
between two reports costs nothing.

The ACK in original mode (HL7 v2.5.1 §2.9.2, table 0008):
- AA: processed; delivered.
- AE: the receiving application found an error in the message (its content): the same message will
  fail again, so it is dead-lettered with the RIS's reason (PermanentError).
- AR: rejected "for a reason unrelated to its content or format" (system down, internal error);
  "the original sender must decide whether to send it again": we do, with back-off, up to the
  attempt and age limits (TransientError). Except when ERR-3 says the message type, event,
  processing id or version is not supported there (table 0357, 200-203): no resend can help.
An enhanced-mode commit ACK (CA/CE/CR) is read the same way (CA delivered, CE retried, CR refused).
No ACK, a timeout or an ACK for another control id: transient (we cannot know it arrived).

Exactly once: MSH-10 (the message control id) is derived from the outbox row and MSH-7 from when
the row was queued, so a resend after a lost ACK is byte-for-byte the same message, which a RIS
recognises as a duplicate by its control id.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from ..domain.vocabulary import Destination
from ..hl7v2.mllp_frame import END, frame, split_frames
from ..hl7v2.oru import oru_r01, parse_ack
from ..records.tables import OutboxDelivery
from ..settings import Settings
from ..storage.image_store import ImageStore
from .errors import PermanentError, TransientError
from .rows import report_rows
from .sender import Sent

MAX_ACK_BYTES = 1024 * 1024  # an ACK is a few hundred bytes; a peer that sends more is not a RIS
DELIVERED_CODES = {"AA", "CA"}
REFUSED_CODES = {"AE", "CR"}
UNSUPPORTED_ERRORS = {"200", "201", "202", "203"}


@dataclass(frozen=True)
class RisMessage:
    control_id: str
    text: str  # the ORU^R01, segments separated by carriage returns


def control_id_for(outbox_id: str) -> str:
    """MSH-10 of a row's message: fixed per row (a retry is the same message) and within the 20
    characters HL7 v2.5.1 gives MSH-10."""
    return outbox_id.replace("-", "")[:20]


class RisSender:
    destination = Destination.RIS
    payload_name = "ORU^R01 message"

    def __init__(self, host: str, port: int, timeout_s: float = 30.0, *, sending_facility: str = "CXRFHIR",
                 receiving_application: str = "RIS", receiving_facility: str = "HOSPITAL"):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.sending_facility, self.receiving_application = sending_facility, receiving_application
        self.receiving_facility = receiving_facility

    @classmethod
    def from_settings(cls, settings: Settings) -> RisSender:
        if not settings.ris_enabled:
            raise ValueError("the RIS is not configured: set CXR_RIS_MLLP_HOST and CXR_RIS_MLLP_PORT")
        assert settings.ris_mllp_host and settings.ris_mllp_port  # ris_enabled says so
        return cls(settings.ris_mllp_host, settings.ris_mllp_port, settings.ris_timeout_s,
                   sending_facility=settings.hl7_sending_facility,
                   receiving_application=settings.hl7_receiving_application,
                   receiving_facility=settings.hl7_receiving_facility)

    def prepare(self, s: Session, images: ImageStore, row: OutboxDelivery) -> RisMessage:
        rows = report_rows(s, row.report_id)
        control_id = control_id_for(row.id)
        text = oru_r01(rows.patient, rows.study, rows.analysis, rows.report, control_id=control_id,
                       sending_facility=self.sending_facility, receiving_application=self.receiving_application,
                       receiving_facility=self.receiving_facility, now=row.created_at)
        return RisMessage(control_id, text)

    def send(self, payload: RisMessage) -> Sent:
        raw = self._exchange(frame(payload.text))
        try:
            ack = parse_ack(raw)
        except ValueError as exc:  # any garbage instead of an ACK: we cannot know it was processed
            raise TransientError(f"the RIS answered something that is not an HL7 ACK ({type(exc).__name__})") from exc
        answer: dict[str, Any] = {"ack": ack.code, "control_id": payload.control_id}
        if ack.text:
            answer["text"] = ack.text[:500]
        if ack.control_id != payload.control_id:
            raise TransientError(f"the RIS acknowledged message {ack.control_id!r}, not {payload.control_id!r}",
                                 response=answer)
        if ack.code in DELIVERED_CODES:
            return Sent(answer)
        reason = f"HL7 {ack.code}: {ack.text or 'no reason given'}"
        unsupported = _unsupported(raw)
        if unsupported:
            answer["error_code"] = unsupported
        if ack.code in REFUSED_CODES or unsupported:
            raise PermanentError(f"{reason} (the RIS refused the message)", response=answer)
        # AR, CE and any unknown code: not processed for a reason other than the message itself.
        raise TransientError(f"{reason} (the RIS could not process it now)", response=answer)

    def _exchange(self, data: bytes) -> str:
        """Send one framed message and read one framed answer (its content, without the frame)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as conn:
                conn.settimeout(self.timeout_s)
                conn.sendall(data)
                return _read_frame(conn)
        except TimeoutError as exc:
            raise TransientError("no ACK from the RIS within the timeout") from exc
        except OSError as exc:
            # The text may name the address; the class name says enough (refused, reset, unreachable).
            raise TransientError(f"network error: {type(exc).__name__}") from exc

    def close(self) -> None:
        """Nothing held between messages."""


def _unsupported(ack: str) -> str | None:
    """ERR-3 when it says the message kind itself is not supported there (HL7 table 0357: 200
    message type, 201 event, 202 processing id, 203 version): an AR that no retry can turn around."""
    for segment in ack.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "ERR" and len(fields) > 3:
            code = fields[3].split("^", 1)[0]
            if code in UNSUPPORTED_ERRORS:
                return code
    return None


def _read_frame(conn: socket.socket) -> str:
    buffer = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            raise TransientError("the RIS closed the connection without an ACK")
        buffer += chunk
        if END in buffer:
            try:
                messages, buffer = split_frames(buffer)
            except ValueError as exc:
                raise TransientError("the RIS's answer is not UTF-8") from exc
            if messages:
                return messages[0]
        if len(buffer) > MAX_ACK_BYTES:
            raise TransientError("the RIS's answer is too large for an ACK")
