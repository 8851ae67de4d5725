"""The SQLModel tables. Alembic migrations in migrations/ must produce exactly this schema.

Patients, studies and reports are *versioned resources*: every create, update and deletion
writes a full snapshot to ``resource_version``, and deletion is a status with a timestamp and
actor, never a row removal.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import JSON, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from ..domain.vocabulary import DeliveryStatus, Destination, Origin, ReportStatus, StudyStatus
from .types import UTCDateTime, new_id, utcnow


class VersionedFields(SQLModel):
    """Columns every versioned resource carries (FHIR meta.versionId / meta.lastUpdated)."""

    if TYPE_CHECKING:  # each table declares its own ``id`` primary key (its first column)
        id: str

    version_id: int = Field(default=1, nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    deleted_by: str | None = Field(default=None, max_length=128)


class Patient(VersionedFields, table=True):
    __tablename__ = "patient"
    __table_args__ = (Index("ix_patient_family_given", "family", "given"),
                      # One living patient per MRN in its system (migration 0005).
                      Index("uq_patient_living_mrn", "mrn_system", "mrn", unique=True,
                            sqlite_where=text("deleted_at IS NULL AND mrn IS NOT NULL"),
                            postgresql_where=text("deleted_at IS NULL AND mrn IS NOT NULL")))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    # None for a patient registered over FHIR without an MRN (e.g. in a transaction from another system).
    mrn: str | None = Field(default=None, index=True, max_length=64, description="Hospital medical record number")
    mrn_system: str = Field(max_length=255)
    family: str = Field(max_length=200)
    given: str = Field(default="", max_length=200)
    birth_date: date | None = Field(default=None)
    sex: str = Field(default="unknown", max_length=16, description="FHIR administrative gender")
    er_area: str | None = Field(default=None, max_length=64)
    triage_level: int | None = Field(default=None, ge=1, le=5, description="ESI level 1 (resuscitation) .. 5")
    attending_doctor: str | None = Field(default=None, max_length=200)
    notes: str | None = Field(default=None)


class Study(VersionedFields, table=True):
    """One uploaded X-ray (a single-image ImagingStudy)."""

    __tablename__ = "study"
    # One living study per SOP Instance UID (migration 0008): the same instance sent twice, by
    # DIMSE, STOW-RS or an upload, or by two nodes at once, is one study.
    __table_args__ = (Index("uq_study_living_sop_instance", "sop_instance_uid", unique=True,
                            sqlite_where=text("deleted_at IS NULL AND sop_instance_uid IS NOT NULL"),
                            postgresql_where=text("deleted_at IS NULL AND sop_instance_uid IS NOT NULL")),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    patient_id: str = Field(foreign_key="patient.id", index=True, max_length=64)
    content_sha256: str = Field(index=True, min_length=64, max_length=64)
    original_filename: str | None = Field(default=None, max_length=255)
    media_type: str = Field(max_length=64)
    size_bytes: int = Field(ge=0)
    study_uid: str | None = Field(default=None, index=True, max_length=64)
    series_uid: str | None = Field(default=None, max_length=64)
    sop_instance_uid: str | None = Field(default=None, max_length=64)
    sop_class_uid: str | None = Field(default=None, max_length=64)
    accession_number: str | None = Field(default=None, max_length=64)
    modality: str | None = Field(default=None, max_length=16)
    view_position: str | None = Field(default=None, max_length=16)
    acquired_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    width: int | None = Field(default=None)
    height: int | None = Field(default=None)
    status: str = Field(default=StudyStatus.RECEIVED, max_length=16, index=True,
                        description="a StudyStatus: received | queued | analyzing | analyzed | failed")
    failure_reason: str | None = Field(default=None)
    # Set when a DICOM header names the patient differently from the record it was filed under.
    identity_warning: str | None = Field(default=None, max_length=500)
    uploaded_by: str | None = Field(default=None, max_length=128)


class Analysis(SQLModel, table=True):
    """The output of one inference run; immutable once written."""

    __tablename__ = "analysis"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    study_id: str = Field(foreign_key="study.id", index=True, max_length=64)
    model_name: str = Field(max_length=128)
    model_version: str = Field(max_length=64)
    manifest_sha256: str = Field(max_length=64)
    probabilities: dict = Field(default_factory=dict, sa_type=JSON, nullable=False)
    top3: list = Field(default_factory=list, sa_type=JSON, nullable=False)
    boxes: list = Field(default_factory=list, sa_type=JSON, nullable=False)
    priority: str = Field(max_length=16, index=True)
    priority_reasons: list = Field(default_factory=list, sa_type=JSON, nullable=False)
    thresholds: dict = Field(default_factory=dict, sa_type=JSON, nullable=False,
                             description="operating thresholds in force when this ran")
    overlays: dict = Field(default_factory=dict, sa_type=JSON, nullable=False,
                           description="finding -> SHA-256 of its heatmap overlay PNG in the image store")
    timings_ms: dict = Field(default_factory=dict, sa_type=JSON, nullable=False)
    unusual_film: bool = Field(default=False, description="the plausibility gate found the film atypical: "
                                                          "analysed, but to be read with care")
    plausibility: float | None = Field(default=None, description="the gate's score (higher: more typical)")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Report(VersionedFields, table=True):
    """The DiagnosticReport for a study."""

    __tablename__ = "report"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    study_id: str = Field(foreign_key="study.id", index=True, max_length=64)
    analysis_id: str = Field(foreign_key="analysis.id", max_length=64)
    status: str = Field(default=ReportStatus.PRELIMINARY, max_length=16, index=True,
                        description="a ReportStatus: preliminary | final | amended | cancelled")
    conclusion: str = Field(default="")
    issued: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    confirmed_by: str | None = Field(default=None, max_length=128)
    confirmed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class ResourceVersion(SQLModel, table=True):
    """Every version of every versioned resource (FHIR _history / vread)."""

    __tablename__ = "resource_version"
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=32)
    resource_id: str = Field(max_length=64, index=True)
    version_id: int
    operation: str = Field(max_length=8, description="create | update | delete")
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)
    actor: str | None = Field(default=None, max_length=128)
    content: dict = Field(sa_type=JSON, nullable=False)


class User(SQLModel, table=True):
    __tablename__ = "app_user"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    username: str = Field(unique=True, max_length=64)
    password_hash: str = Field(max_length=255)
    role: str = Field(max_length=16, description="doctor | admin")
    display_name: str | None = Field(default=None, max_length=200)
    disabled: bool = Field(default=False)
    failed_logins: int = Field(default=0)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class ApiClient(SQLModel, table=True):
    """A FHIR API client; only the SHA-256 of its bearer token is kept."""

    __tablename__ = "api_client"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    name: str = Field(unique=True, max_length=128)
    token_sha256: str = Field(unique=True, max_length=64)
    scopes: list = Field(default_factory=list, sa_type=JSON, nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    created_by: str | None = Field(default=None, max_length=128)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class AuditEvent(SQLModel, table=True):
    """Append-only record of every access to patient data (served as FHIR AuditEvent)."""

    __tablename__ = "audit_event"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    recorded: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)
    action: str = Field(max_length=1, description="C | R | U | D | E")
    subtype: str = Field(max_length=32, description="read, search, login, delivery ...")
    outcome: str = Field(default="0", max_length=2, description="FHIR AuditEvent outcome: 0, 4, 8, 12")
    agent_type: str = Field(max_length=16, description="user | client | system")
    agent_id: str | None = Field(default=None, max_length=128, index=True)
    source_ip: str | None = Field(default=None, max_length=64)
    entity_type: str | None = Field(default=None, max_length=32)
    entity_id: str | None = Field(default=None, max_length=64, index=True)
    query: str | None = Field(default=None)
    detail: str | None = Field(default=None)


class OutboxDelivery(SQLModel, table=True):
    """A pending push of a report version to one destination (the EHR, the PACS, the RIS), written in
    the report's own transaction. ``ehr_response`` holds the destination's answer, whichever it is."""

    __tablename__ = "outbox_delivery"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),
                      Index("ix_outbox_report_destination", "report_id", "destination"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    report_id: str = Field(foreign_key="report.id", index=True, max_length=64)
    report_version: int
    destination: str = Field(default=Destination.EHR, max_length=16,
                             description="a Destination: ehr | pacs | ris (one sender each, one worker)")
    status: str = Field(default=DeliveryStatus.PENDING, max_length=16,
                        description="a DeliveryStatus: pending | delivered | dead")
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    last_error: str | None = Field(default=None)
    ehr_response: dict | None = Field(default=None, sa_type=JSON, nullable=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class FhirResource(SQLModel, table=True):
    """The current version of every resource the FHIR API serves, as the JSON it serves.

    ``origin`` 'domain': a projection of our own rows (patients, studies, AI results), rewritten
    whenever those rows change; 'api': created by a client and stored as it was sent.
    """

    __tablename__ = "fhir_resource"

    resource_type: str = Field(primary_key=True, max_length=40)
    id: str = Field(primary_key=True, max_length=64)
    version_id: int
    last_updated: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    deleted: bool = Field(default=False)
    origin: str = Field(default=Origin.API, max_length=8)
    content: dict = Field(sa_type=JSON, nullable=False)


class FhirResourceHistory(SQLModel, table=True):
    """Every version of every FHIR resource (vread, _history); deletions are versions too."""

    __tablename__ = "fhir_resource_history"
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "version_id"),
                      Index("ix_fhir_history_time", "resource_type", "last_updated"))

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=40)
    resource_id: str = Field(max_length=64)
    version_id: int
    method: str = Field(max_length=8, description="POST | PUT | DELETE")
    last_updated: datetime = Field(sa_type=UTCDateTime, nullable=False)
    content: dict = Field(sa_type=JSON, nullable=False)


class FhirIndex(SQLModel, table=True):
    """Search index of the current versions: one row per (resource, search parameter, value)."""

    __tablename__ = "fhir_index"
    __table_args__ = (Index("ix_fhir_index_lookup", "resource_type", "param", "value"),
                      Index("ix_fhir_index_resource", "resource_type", "resource_id"),
                      Index("ix_fhir_index_date", "resource_type", "param", "date_lo"))

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=40)
    resource_id: str = Field(max_length=64)
    param: str = Field(max_length=64)
    system: str | None = Field(default=None, max_length=255, description="token system")
    value: str | None = Field(default=None, max_length=255,
                              description="token code, normalised string, or reference Type/id")
    raw: str | None = Field(default=None, max_length=255, description="string as written (for :exact)")
    date_lo: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    date_hi: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


VERSIONED: dict[str, type[VersionedFields]] = {"Patient": Patient, "Study": Study, "Report": Report}


class WebSession(SQLModel, table=True):
    """A logged-in browser (the web pages). The cookie holds a random token; only its SHA-256 is kept."""

    __tablename__ = "web_session"

    token_sha256: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="app_user.id", index=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    source_ip: str | None = Field(default=None, max_length=64)
