"""A doctor's decisions on a result: confirm or amend the report, delete a study.

Every change that the EHR (and the PACS, the RIS) must learn about writes its outbox rows in the
same transaction as the change itself, so a crash can never leave a changed report that is not
queued for delivery.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlmodel import Session

from ..domain.errors import BusinessRule
from ..domain.vocabulary import Destination, ReportStatus
from ..records.tables import OutboxDelivery, Report, Study
from ..records.types import utcnow
from ..storage.fhir import projection
from ..storage.repositories import ReportRepository, StudyRepository


class ReportStateError(BusinessRule):
    """The change is not allowed from the report's current status."""


def enqueue_delivery(session: Session, report: Report, destination: Destination = Destination.EHR) -> OutboxDelivery:
    """Queue this version of the report for one destination (call inside the report's transaction)."""
    row = OutboxDelivery(report_id=report.id, report_version=report.version_id, destination=destination)
    session.add(row)
    session.flush()
    return row


def enqueue_deliveries(session: Session, report: Report, destinations: Collection[Destination]) -> list[OutboxDelivery]:
    """Queue this version for every configured destination that should hear of it. The PACS hears
    only of studies that came as DICOM (its SR and Secondary Capture refer to the instance it
    holds), and not of a cancelled report (a deleted study: DICOM has no retraction to send)."""
    rows = []
    for destination in destinations:
        if destination == Destination.PACS:
            study = session.get(Study, report.study_id)
            if study is None or study.media_type != "application/dicom" or report.status == ReportStatus.CANCELLED:
                continue
        rows.append(enqueue_delivery(session, report, destination))
    return rows


class ReportService:
    """Confirm and amend reports, inside the caller's unit of work (``writing``)."""

    def __init__(self, destinations: Collection[Destination]):
        self.destinations = tuple(destinations)

    def confirm(self, s: Session, report_id: str, actor: str, conclusion: str | None = None,
                expected_version: int | None = None) -> Report:
        """preliminary -> final (the doctor may edit the conclusion while confirming)."""
        current = ReportRepository(s).get_for_update(report_id)  # two confirms cannot both pass
        if current.status != ReportStatus.PRELIMINARY:
            raise ReportStateError(f"report is {current.status}; only a preliminary report can be confirmed")
        changes: dict[str, Any] = {"status": ReportStatus.FINAL, "confirmed_by": actor, "confirmed_at": utcnow(),
                                   "issued": utcnow()}
        if conclusion is not None:
            changes["conclusion"] = _clean(conclusion)
        return self._save(s, report_id, changes, actor, expected_version)

    def amend(self, s: Session, report_id: str, conclusion: str, actor: str,
              expected_version: int | None = None) -> Report:
        """final | amended -> amended with a new conclusion."""
        current = ReportRepository(s).get_for_update(report_id)  # two amends cannot both pass
        if current.status not in (ReportStatus.FINAL, ReportStatus.AMENDED):
            raise ReportStateError(f"report is {current.status}; confirm it before amending")
        changes: dict[str, Any] = {"status": ReportStatus.AMENDED, "conclusion": _clean(conclusion),
                                   "confirmed_by": actor, "confirmed_at": utcnow(), "issued": utcnow()}
        return self._save(s, report_id, changes, actor, expected_version)

    def _save(self, s: Session, report_id: str, changes: dict[str, Any], actor: str,
              expected_version: int | None) -> Report:
        report = ReportRepository(s).update(report_id, changes, actor=actor, expected_version=expected_version)
        projection.report(s, report)
        enqueue_deliveries(s, report, self.destinations)
        return report


class StudyService:
    """Delete a study (logically), inside the caller's unit of work (``writing``)."""

    def __init__(self, destinations: Collection[Destination]):
        self.destinations = tuple(destinations)

    def delete(self, s: Session, study_id: str, actor: str, expected_version: int | None = None) -> Study:
        """The study and its report leave the lists but stay in history and audit. A report
        already sent to the EHR is re-sent as cancelled so the EHR stops showing it."""
        study = StudyRepository(s).soft_delete(study_id, actor=actor, expected_version=expected_version)
        projection.study(s, study)
        reports = ReportRepository(s)
        report = reports.for_study(study_id)
        if report is not None and report.status != ReportStatus.CANCELLED:
            report = reports.update(report.id, {"status": ReportStatus.CANCELLED}, actor=actor)
            projection.report(s, report)
            enqueue_deliveries(s, report, self.destinations)
        return study


def _clean(conclusion: str) -> str:
    text = conclusion.strip()
    if not text:
        raise ReportStateError("the conclusion cannot be empty")
    if len(text) > 10_000:
        raise ReportStateError("the conclusion is longer than 10,000 characters")
    return text
