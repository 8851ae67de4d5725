"""Delivery status per destination (EHR, PACS, RIS) and manual retry, for the web pages, the FHIR
mapping (EHR only) and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from ..domain.errors import BusinessRule, NotFound
from ..domain.vocabulary import DeliveryStatus, Destination
from ..fhir.mapping import FHIR_CODE
from ..records.tables import OutboxDelivery
from ..records.types import utcnow
from ..security import audit
from ..storage.db import reading, writing


class RetryRefused(BusinessRule):
    """The delivery cannot be retried (already delivered, or a newer version replaces it)."""


@dataclass(frozen=True)
class Delivery:
    outbox_id: str
    report_version: int
    status: DeliveryStatus
    attempts: int
    last_error: str | None  # the destination's reason for the last failure (also while still pending)
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    ehr_ids: list[str]  # the EHR's Type/id of each resource, from its transaction-response
    destination: Destination = Destination.EHR
    # What the destination holds now: the EHR's Type/id, the PACS's SOP Instance UIDs, the HL7
    # message control id the RIS acknowledged.
    refs: tuple[str, ...] = ()

    @property
    def fhir_code(self) -> str:
        """The valueCode of the DiagnosticReport's urn:cxr-fhir:ehr-delivery-status extension."""
        return FHIR_CODE[self.status]


def _status(row: OutboxDelivery) -> Delivery:
    status = DeliveryStatus(row.status)
    answer = (row.ehr_response or {}) if status == DeliveryStatus.DELIVERED else {}
    ehr_ids = [e["id"] for e in answer.get("entries", []) if e.get("id")]
    refs = [*ehr_ids, *answer.get("sop_instance_uids", [])]
    if answer.get("control_id"):
        refs.append(answer["control_id"])
    return Delivery(row.id, row.report_version, status, row.attempts, row.last_error,
                    row.next_attempt_at if status == DeliveryStatus.PENDING else None, row.delivered_at,
                    ehr_ids, Destination(row.destination), tuple(refs))


def newest(s: Session, report_id: str, destination: str = Destination.EHR) -> OutboxDelivery | None:
    """The delivery of the report's newest version to ``destination``."""
    return s.exec(select(OutboxDelivery).where(col(OutboxDelivery.report_id) == report_id,
                                               col(OutboxDelivery.destination) == destination)
                  .order_by(col(OutboxDelivery.report_version).desc(), col(OutboxDelivery.created_at).desc())).first()


class OutboxService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def status_for_report(self, report_id: str, destination: Destination = Destination.EHR) -> Delivery | None:
        """The delivery of the report's newest version to ``destination``; None when it was never
        queued for it (that destination off, or the PACS for a study that did not come as DICOM)."""
        with reading(self.engine) as s:
            row = newest(s, report_id, destination)
            return _status(row) if row else None

    def statuses_for_report(self, report_id: str) -> dict[Destination, Delivery]:
        """The newest delivery of the report to each destination it was ever queued for."""
        with reading(self.engine) as s:
            rows = s.exec(select(OutboxDelivery).where(col(OutboxDelivery.report_id) == report_id)
                          .order_by(col(OutboxDelivery.report_version), col(OutboxDelivery.created_at))).all()
            found = {Destination(r.destination): r for r in rows}  # the newest of each destination wins
            return {d: _status(found[d]) for d in Destination if d in found}

    def list(self, status: str | None = None, limit: int = 100,
             destination: Destination | None = None) -> list[OutboxDelivery]:
        with reading(self.engine) as s:
            stmt = select(OutboxDelivery)
            if status:
                stmt = stmt.where(col(OutboxDelivery.status) == status)
            if destination:
                stmt = stmt.where(col(OutboxDelivery.destination) == destination)
            return list(s.exec(stmt.order_by(col(OutboxDelivery.created_at).desc()).limit(limit)).all())

    def backlog(self, destination: Destination | None = None) -> dict[str, int]:
        """Counts for /ready: deliveries still to go, and dead letters awaiting an operator (of one
        destination, or of all)."""
        stmt = select(col(OutboxDelivery.status), func.count())
        if destination is not None:
            stmt = stmt.where(col(OutboxDelivery.destination) == destination)
        with reading(self.engine) as s:
            rows = dict(s.exec(stmt.group_by(col(OutboxDelivery.status))).all())
        return {"pending": rows.get(DeliveryStatus.PENDING, 0), "dead": rows.get(DeliveryStatus.DEAD, 0)}

    def retry(self, outbox_id: str, actor: str) -> OutboxDelivery:
        """Queue a failed (or waiting) delivery for an attempt now, with a fresh attempt count.
        The age limit still counts from when the report changed, so a very old one gets one try."""
        with writing(self.engine) as s:
            row = s.exec(select(OutboxDelivery).where(col(OutboxDelivery.id) == outbox_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"outbox delivery {outbox_id} not found")
            if row.status == DeliveryStatus.DELIVERED:
                raise RetryRefused(f"delivery {outbox_id} was already delivered")
            latest = newest(s, row.report_id, row.destination)
            assert latest is not None  # ``row`` itself is one of the report's deliveries
            if latest.id != row.id:
                raise RetryRefused(f"report version {row.report_version} is replaced by version "
                                   f"{latest.report_version} (delivery {latest.id}); retry that one")
            row.status, row.attempts, row.next_attempt_at = DeliveryStatus.PENDING, 0, utcnow()
            s.add(row)
            audit.record(s, action="U", subtype="delivery-retry", agent_type="user", agent_id=actor,
                         entity_type="DiagnosticReport", entity_id=row.report_id, detail=f"outbox {row.id}")
            return row
