"""Repositories, one per aggregate. Versioned ones keep every version in ``resource_version``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, or_, select

from ..domain.errors import Gone, NotFound, VersionConflict
from ..records.tables import AuditEvent, Patient, Report, ResourceVersion, Study, User, VersionedFields
from ..records.types import utcnow

T = TypeVar("T", bound=VersionedFields)

# Columns the repository owns; callers may not set them through update().
_MANAGED = {"id", "version_id", "created_at", "updated_at", "deleted_at", "deleted_by"}


class VersionedRepository(Generic[T]):
    model: type[T]
    resource_type: str

    def __init__(self, session: Session):
        self.session = session

    # -- writes ---------------------------------------------------------------------------
    def create(self, obj: T, actor: str | None) -> T:
        now = utcnow()
        obj.version_id, obj.created_at, obj.updated_at = 1, now, now
        self.session.add(obj)
        self.session.flush()
        self._snapshot(obj, "create", actor)
        return obj

    def update(self, id: str, changes: dict[str, Any], actor: str | None,
               expected_version: int | None = None) -> T:
        obj = self._locked(id)
        if obj.deleted_at is not None:
            raise Gone(f"{self.resource_type}/{id} was deleted")
        if expected_version is not None and expected_version != obj.version_id:
            raise VersionConflict(expected_version, obj.version_id)
        bad = set(changes) & _MANAGED
        if bad:
            raise ValueError(f"cannot set managed fields: {sorted(bad)}")
        for key, value in changes.items():
            if not hasattr(obj, key):
                raise ValueError(f"{self.resource_type} has no field {key!r}")
            setattr(obj, key, value)
        obj.version_id += 1
        obj.updated_at = utcnow()
        self.session.add(obj)
        self.session.flush()
        self._snapshot(obj, "update", actor)
        return obj

    def soft_delete(self, id: str, actor: str | None, expected_version: int | None = None) -> T:
        """Mark deleted; the row and its history stay. Deleting twice is a no-op."""
        obj = self._locked(id)
        if obj.deleted_at is not None:
            return obj
        if expected_version is not None and expected_version != obj.version_id:
            raise VersionConflict(expected_version, obj.version_id)
        now = utcnow()
        obj.deleted_at, obj.deleted_by = now, actor
        obj.version_id += 1
        obj.updated_at = now
        self.session.add(obj)
        self.session.flush()
        self._snapshot(obj, "delete", actor)
        return obj

    # -- reads ----------------------------------------------------------------------------
    def get(self, id: str, include_deleted: bool = False) -> T:
        obj = self.session.get(self.model, id)
        if obj is None:
            raise NotFound(f"{self.resource_type}/{id} not found")
        if obj.deleted_at is not None and not include_deleted:
            raise Gone(f"{self.resource_type}/{id} was deleted")
        return obj

    def get_for_update(self, id: str) -> T:
        """The current row, locked until the transaction ends: for a check that a write relies on."""
        obj = self._locked(id)
        if obj.deleted_at is not None:
            raise Gone(f"{self.resource_type}/{id} was deleted")
        return obj

    def history(self, id: str) -> Sequence[ResourceVersion]:
        """All versions, newest first."""
        stmt = (select(ResourceVersion)
                .where(ResourceVersion.resource_type == self.resource_type, ResourceVersion.resource_id == id)
                .order_by(col(ResourceVersion.version_id).desc()))
        return self.session.exec(stmt).all()

    def version(self, id: str, version_id: int) -> ResourceVersion:
        stmt = select(ResourceVersion).where(
            ResourceVersion.resource_type == self.resource_type,
            ResourceVersion.resource_id == id, ResourceVersion.version_id == version_id)
        row = self.session.exec(stmt).first()
        if row is None:
            raise NotFound(f"{self.resource_type}/{id}/_history/{version_id} not found")
        return row

    # -- internals ------------------------------------------------------------------------
    def _locked(self, id: str) -> T:
        # populate_existing: a row already in this session must be re-read, or a stale version
        # would pass the optimistic check.
        obj = self.session.exec(select(self.model).where(col(self.model.id) == id).with_for_update()
                                .execution_options(populate_existing=True)).first()
        if obj is None:
            raise NotFound(f"{self.resource_type}/{id} not found")
        return obj

    def _snapshot(self, obj: T, operation: str, actor: str | None) -> None:
        self.session.add(ResourceVersion(
            resource_type=self.resource_type, resource_id=obj.id, version_id=obj.version_id,
            operation=operation, recorded_at=obj.updated_at, actor=actor,
            content=obj.model_dump(mode="json")))
        try:
            self.session.flush()
        except IntegrityError as exc:
            # Another writer saved this version number first (SQLite has no row locks).
            raise VersionConflict(obj.version_id - 1, obj.version_id) from exc


class PatientRepository(VersionedRepository[Patient]):
    model, resource_type = Patient, "Patient"

    def by_mrn(self, mrn: str, system: str) -> Patient | None:
        """An MRN means something only within its issuing system."""
        stmt = select(Patient).where(Patient.mrn == mrn, Patient.mrn_system == system,
                                     col(Patient.deleted_at).is_(None))
        return self.session.exec(stmt).first()

    def search(self, text: str = "", er_area: str | None = None, triage_level: int | None = None,
               offset: int = 0, limit: int = 20) -> tuple[Sequence[Patient], int]:
        stmt = select(Patient).where(col(Patient.deleted_at).is_(None))
        if text:
            # The user's % and _ are letters, not wildcards.
            escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{escaped}%"
            stmt = stmt.where(or_(*(func.lower(column).like(like, escape="\\")
                                    for column in (Patient.family, Patient.given, Patient.mrn))))
        if er_area:
            stmt = stmt.where(Patient.er_area == er_area)
        if triage_level is not None:
            stmt = stmt.where(Patient.triage_level == triage_level)
        total = self.session.exec(select(func.count()).select_from(stmt.subquery())).one()
        rows = self.session.exec(stmt.order_by(Patient.family, Patient.given, Patient.id)
                                 .offset(offset).limit(limit)).all()
        return rows, total


class StudyRepository(VersionedRepository[Study]):
    model, resource_type = Study, "Study"

    def for_patient(self, patient_id: str) -> Sequence[Study]:
        stmt = (select(Study).where(Study.patient_id == patient_id, col(Study.deleted_at).is_(None))
                .order_by(col(Study.created_at).desc()))
        return self.session.exec(stmt).all()


class ReportRepository(VersionedRepository[Report]):
    model, resource_type = Report, "Report"

    def for_study(self, study_id: str) -> Report | None:
        stmt = (select(Report).where(Report.study_id == study_id, col(Report.deleted_at).is_(None))
                .order_by(col(Report.created_at).desc()))
        return self.session.exec(stmt).first()


class UserRepository:
    def __init__(self, session: Session):
        self.session = session

    def by_username(self, username: str) -> User | None:
        return self.session.exec(select(User).where(User.username == username)).first()

    def add(self, user: User) -> User:
        self.session.add(user)
        self.session.flush()
        return user


class AuditRepository:
    """Append-only: there is no update or delete here on purpose."""

    def __init__(self, session: Session):
        self.session = session

    def record(self, event: AuditEvent) -> AuditEvent:
        self.session.add(event)
        self.session.flush()
        return event
