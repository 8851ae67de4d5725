"""Read-only views the pages show (writes go through the services, never through here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..domain.vocabulary import DeliveryStatus, Destination, StudyStatus
from ..records.tables import Analysis, OutboxDelivery, Patient, Report, Study
from ..records.types import utcnow
from ..storage.db import reading
from .common import PRIORITY_RANK

WORKLIST_WINDOW = timedelta(days=3)


@dataclass
class StudyRow:
    study: Study
    patient: Patient
    analysis: Analysis | None
    report: Report | None
    delivery: str | None = None  # the EHR delivery of the report's newest version: pending | delivered | dead

    @property
    def priority(self) -> str:
        if self.analysis is not None:
            return self.analysis.priority
        if self.study.status == StudyStatus.FAILED:
            return StudyStatus.FAILED
        return StudyStatus.ANALYZING if self.study.status == StudyStatus.ANALYZING else StudyStatus.QUEUED

    @property
    def top(self) -> dict | None:
        return self.analysis.top3[0] if self.analysis and self.analysis.top3 else None


def _attach(s: Session, rows: list[tuple[Study, Patient]]) -> list[StudyRow]:
    ids = [st.id for st, _ in rows]
    analyses: dict[str, Analysis] = {}
    reports: dict[str, Report] = {}
    deliveries: dict[str, str] = {}
    if ids:
        for a in s.exec(select(Analysis).where(col(Analysis.study_id).in_(ids)).order_by(col(Analysis.created_at))):
            analyses[a.study_id] = a  # the newest wins
        for r in s.exec(select(Report).where(col(Report.study_id).in_(ids)).order_by(col(Report.created_at))):
            reports[r.study_id] = r
        deliveries = _delivery_states(s, [r.id for r in reports.values()])
    return [StudyRow(st, p, analyses.get(st.id), reports.get(st.id),
                     deliveries.get(reports[st.id].id) if st.id in reports else None) for st, p in rows]


def _delivery_states(s: Session, report_ids: list[str]) -> dict[str, str]:
    """One query for all the rows shown: the status of each report's newest delivery (the same
    ordering as services.outbox.newest, so the badge agrees with the result page)."""
    if not report_ids:
        return {}
    found: dict[str, str] = {}
    for report_id, status in s.exec(select(OutboxDelivery.report_id, OutboxDelivery.status)
                                    .where(col(OutboxDelivery.report_id).in_(report_ids),
                                           col(OutboxDelivery.destination) == Destination.EHR)  # the EHR badge
                                    .order_by(col(OutboxDelivery.report_version), col(OutboxDelivery.created_at))):
        found[report_id] = status  # the newest wins
    return found


def worklist(engine: Engine, now: datetime | None = None, limit: int = 100) -> list[StudyRow]:
    """Recent studies across patients: most urgent first, then newest."""
    since = (now or utcnow()) - WORKLIST_WINDOW
    with reading(engine) as s:
        rows = s.exec(select(Study, Patient).join(Patient, col(Patient.id) == col(Study.patient_id))
                      .where(col(Study.deleted_at).is_(None), col(Patient.deleted_at).is_(None),
                             col(Study.created_at) >= since)
                      .order_by(col(Study.created_at).desc()).limit(limit)).all()
        items = _attach(s, list(rows))
    items.sort(key=lambda r: (PRIORITY_RANK.get(r.priority, 9), -r.study.created_at.timestamp()))
    return items


def patient_studies(engine: Engine, patient: Patient) -> list[StudyRow]:
    """The diagnosis history of one patient, newest first (deleted studies are not listed)."""
    with reading(engine) as s:
        studies = s.exec(select(Study).where(Study.patient_id == patient.id, col(Study.deleted_at).is_(None))
                         .order_by(col(Study.created_at).desc())).all()
        return _attach(s, [(st, patient) for st in studies])


def study_row(engine: Engine, study_id: str) -> StudyRow | None:
    """One study with its patient, analysis and report; deleted ones too (kept in history)."""
    with reading(engine) as s:
        found = s.exec(select(Study, Patient).join(Patient, col(Patient.id) == col(Study.patient_id))
                       .where(Study.id == study_id)).first()
        if found is None:
            return None
        return _attach(s, [found])[0]


def er_areas(engine: Engine) -> list[str]:
    with reading(engine) as s:
        values = s.exec(select(Patient.er_area).where(col(Patient.er_area).is_not(None),
                                                      col(Patient.deleted_at).is_(None)).distinct()).all()
    return sorted(v for v in values if v)


@dataclass
class DeliveryRow:
    delivery: OutboxDelivery
    report: Report
    study: Study
    patient: Patient


DELIVERY_STATES = tuple(DeliveryStatus)


def deliveries(engine: Engine, status: str | None = None, limit: int = 100) -> list[DeliveryRow]:
    """Outbox rows for the admin page, newest first, with the report, study and patient they are for."""
    stmt = (select(OutboxDelivery, Report, Study, Patient)
            .join(Report, col(Report.id) == col(OutboxDelivery.report_id))
            .join(Study, col(Study.id) == col(Report.study_id))
            .join(Patient, col(Patient.id) == col(Study.patient_id)))
    if status:
        stmt = stmt.where(OutboxDelivery.status == status)
    with reading(engine) as s:
        rows = s.exec(stmt.order_by(col(OutboxDelivery.created_at).desc()).limit(limit)).all()
    return [DeliveryRow(*r) for r in rows]
