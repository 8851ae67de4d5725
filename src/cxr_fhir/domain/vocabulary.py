"""The statuses every room speaks, one StrEnum each.

Their values are what the database columns, the FHIR codes and the pages already hold, so a
member compares equal to its stored string and JSON-encodes as it.
"""

from __future__ import annotations

from enum import StrEnum


class StudyStatus(StrEnum):
    """Where a study is in its life: stored, waiting for the models, analysed or failed."""

    RECEIVED = "received"
    QUEUED = "queued"
    ANALYZING = "analyzing"
    ANALYZED = "analyzed"
    FAILED = "failed"


class ReportStatus(StrEnum):
    """The AI report's state (FHIR DiagnosticReport.status codes): preliminary until a doctor
    confirms it."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"
    CANCELLED = "cancelled"


class DeliveryStatus(StrEnum):
    """An outbox delivery: still to go (or retrying), delivered, or given up (a dead letter)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Destination(StrEnum):
    """Where the outbox sends a report version: the EHR (FHIR transaction Bundle), the PACS (DICOM
    SR + Secondary Capture by C-STORE or STOW-RS) or the RIS (HL7 v2 ORU^R01 over MLLP)."""

    EHR = "ehr"
    PACS = "pacs"
    RIS = "ris"


class Origin(StrEnum):
    """Who owns a stored FHIR resource: a client's as sent ('api'), or a projection of our own
    rows ('domain', changed only through the services)."""

    API = "api"
    DOMAIN = "domain"


class Priority(StrEnum):
    """Triage priority (FHIR request-priority codes)."""

    ROUTINE = "routine"
    URGENT = "urgent"
    STAT = "stat"
