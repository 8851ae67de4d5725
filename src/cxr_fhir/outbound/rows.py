"""The rows a report's payload is made of, read once by every sender."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from ..domain.errors import NotFound
from ..records.tables import Analysis, Patient, Report, Study
from ..storage.repositories import PatientRepository, ReportRepository, StudyRepository


@dataclass(frozen=True)
class ReportRows:
    patient: Patient
    study: Study
    analysis: Analysis
    report: Report


def report_rows(s: Session, report_id: str) -> ReportRows:
    """The report as it is now (the newest version), with everything it refers to. Deleted rows
    are included: a deleted study's report goes out as cancelled."""
    report = ReportRepository(s).get(report_id, include_deleted=True)
    study = StudyRepository(s).get(report.study_id, include_deleted=True)
    patient = PatientRepository(s).get(study.patient_id, include_deleted=True)
    analysis = s.get(Analysis, report.analysis_id)
    if analysis is None:  # a foreign key, and analyses are never deleted; a broken row cannot be sent
        raise NotFound(f"Analysis/{report.analysis_id} of DiagnosticReport/{report_id} not found")
    return ReportRows(patient, study, analysis, report)
