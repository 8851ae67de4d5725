"""The outbox worker: claim a due delivery, send its report as one transaction Bundle, record the outcome.

Exactly once in effect: every Bundle entry is conditional on a business identifier (fhir/bundles.py),
so a retry after a lost answer changes nothing in the EHR, and a delivery is claimed by one worker at
a time (row lock + lease), so two workers never send the same row.

Order per report: only the newest outbox row of a report is ever claimed, and not while another row
of that report is in flight; older rows are marked delivered with ``superseded_by_version``. So an
older version can never reach the EHR after a newer one.

Crash safety: a claim is a lease (``claimed_by``/``claimed_until``). A worker that dies leaves its
rows pending; they become claimable again when the lease runs out.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Exists, and_, exists, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from ..domain.errors import NotFound
from ..domain.vocabulary import DeliveryStatus
from ..fhir import mapping
from ..fhir.bundles import ehr_transaction
from ..records.tables import Analysis, OutboxDelivery
from ..records.types import utcnow
from ..security import audit
from ..settings import Settings
from ..storage.db import writing
from ..storage.image_store import ImageStore
from ..storage.repositories import PatientRepository, ReportRepository, StudyRepository
from .ehr_client import EhrClient, TransactionResult
from .errors import DeliveryError, PermanentError, TransientError

log = logging.getLogger("cxr_fhir.outbound.worker")


@dataclass
class Policy:
    max_attempts: int = 12
    max_age: timedelta = timedelta(hours=72)
    retry_base_s: float = 10.0
    retry_max_s: float = 3600.0
    lease: timedelta = timedelta(minutes=5)
    poll_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(max_attempts=settings.ehr_max_attempts, max_age=timedelta(hours=settings.ehr_max_age_hours),
                   retry_base_s=settings.ehr_retry_base_s, retry_max_s=settings.ehr_retry_max_s,
                   lease=timedelta(seconds=settings.ehr_lease_s), poll_s=settings.ehr_poll_s)

    def backoff_s(self, attempts: int) -> float:
        """Exponential, with jitter so that many deliveries failed by one outage do not return in step."""
        ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** max(0, attempts - 1))
        return random.uniform(ceiling / 2, ceiling)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _newer_row() -> Exists:
    """SQL: another outbox row of the same report carries a later version."""
    other = aliased(OutboxDelivery)
    return exists().where(col(other.report_id) == col(OutboxDelivery.report_id),
                          col(other.report_version) > col(OutboxDelivery.report_version))


def _sibling_in_flight(now: datetime) -> Exists:
    other = aliased(OutboxDelivery)
    return exists().where(col(other.report_id) == col(OutboxDelivery.report_id),
                          col(other.id) != col(OutboxDelivery.id),
                          col(other.status) == DeliveryStatus.PENDING, col(other.claimed_until) > now)


def _claimable(now: datetime) -> ColumnElement[bool]:
    return and_(col(OutboxDelivery.status) == DeliveryStatus.PENDING, col(OutboxDelivery.next_attempt_at) <= now,
                or_(col(OutboxDelivery.claimed_until).is_(None), col(OutboxDelivery.claimed_until) <= now),
                ~_newer_row(), ~_sibling_in_flight(now))


class DeliveryWorker:
    def __init__(self, engine: Engine, images: ImageStore, client: EhrClient, policy: Policy,
                 worker_id: str | None = None):
        self.engine, self.images, self.client, self.policy = engine, images, client, policy
        self.worker_id = worker_id or new_worker_id()

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; pending rows left by an earlier run are simply due again."""
        log.info("ehr worker started", extra={"worker": self.worker_id})
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # a database hiccup must not end the worker; try again after a pause
                log.exception("ehr worker iteration failed", extra={"worker": self.worker_id})
                busy = False
            if not busy:
                stop.wait(self.policy.poll_s)
        log.info("ehr worker stopped", extra={"worker": self.worker_id})

    def run_once(self) -> bool:
        """Claim and handle one due delivery; False when nothing was due."""
        row_id = self.claim()
        if row_id is None:
            return False
        self.deliver(row_id)
        return True

    def drain(self, limit: int = 1000) -> int:
        """Handle due deliveries until none is due (the CLI's --once and the tests)."""
        done = 0
        while done < limit and self.run_once():
            done += 1
        return done

    # -- claim ----------------------------------------------------------------------------
    def claim(self) -> str | None:
        """Atomically take one due delivery. PostgreSQL: the candidate row is locked FOR UPDATE SKIP
        LOCKED, so concurrent workers pick different rows without waiting. SQLite: the single UPDATE
        statement runs under the database's one write lock, which is as atomic."""
        now = utcnow()
        # correlate(None): the candidate is picked from the whole table, not from the row being updated.
        candidate = (select(col(OutboxDelivery.id)).where(_claimable(now))
                     .order_by(col(OutboxDelivery.next_attempt_at), col(OutboxDelivery.created_at)).limit(1)
                     .correlate(None))
        if self.engine.dialect.name == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True, of=OutboxDelivery)
        stmt = (update(OutboxDelivery)
                # The conditions again: PostgreSQL re-checks them on the locked row at UPDATE time.
                # "id = (subquery)", not "id IN": PostgreSQL then runs the subquery once (an InitPlan);
                # with IN it may re-run it per row and lock one more row each time.
                .where(col(OutboxDelivery.id) == candidate.scalar_subquery(), _claimable(now))
                .values(claimed_by=self.worker_id, claimed_until=now + self.policy.lease)
                .returning(col(OutboxDelivery.id)))
        with writing(self.engine) as s:
            return s.exec(stmt).scalars().first()

    # -- deliver --------------------------------------------------------------------------
    def deliver(self, row_id: str) -> str:
        """Send one claimed delivery; returns its new status (pending, delivered or dead)."""
        with writing(self.engine) as s:
            row = s.get(OutboxDelivery, row_id)
            if row is None or row.status != DeliveryStatus.PENDING or row.claimed_by != self.worker_id:
                return row.status if row else "gone"
            # A newer version queued since the claim wins: never send the older one after it.
            newer = self._newest_version(s, row)
            if newer > row.report_version:
                self._settle_superseded(s, row, newer)
                return DeliveryStatus.DELIVERED
            try:
                bundle = build_bundle(s, self.images, row.report_id)
            except Exception as exc:  # our own data cannot make a bundle: no retry will fix it
                error: DeliveryError | None = PermanentError(f"cannot build the bundle: {type(exc).__name__}: {exc}")
                bundle = None
            report_id, attempt = row.report_id, row.attempts + 1
        result = None
        if bundle is not None:
            try:
                result = self.client.transaction(bundle)
                error = None
            except DeliveryError as exc:
                error = exc
        return self._record(row_id, report_id, attempt, result, error)

    def _record(self, row_id: str, report_id: str, attempt: int, result: TransactionResult | None,
                error: DeliveryError | None) -> str:
        now = utcnow()
        with writing(self.engine) as s:
            row = s.exec(select(OutboxDelivery).where(col(OutboxDelivery.id) == row_id).with_for_update()
                         .execution_options(populate_existing=True)).one()
            if row.status != DeliveryStatus.PENDING:  # settled meanwhile (our lease ran out): keep that, audit ours
                self._audit(s, row_id, report_id, attempt, error, "superseded attempt")
                return row.status
            if row.claimed_by is not None and row.claimed_by != self.worker_id:
                # Our lease ran out and another worker holds the row now: its attempt settles it,
                # so the order of a report's versions stays that worker's to keep.
                self._audit(s, row_id, report_id, attempt, error, "attempt after the lease expired")
                return row.status
            row.attempts, row.claimed_by, row.claimed_until = attempt, None, None
            http_status: int | None
            if error is None:
                assert result is not None  # deliver() passes the EHR's answer whenever there is no error
                http_status = result.status
                row.status, row.delivered_at, row.last_error = DeliveryStatus.DELIVERED, now, None
                row.ehr_response = {"http_status": result.status, "entries": result.entries}
            else:
                http_status = getattr(error, "status", None)
                row.last_error = error.reason
                if error.outcome:
                    row.ehr_response = {"http_status": error.status, "outcome": error.outcome}
                too_old = now - row.created_at >= self.policy.max_age
                if isinstance(error, PermanentError) or attempt >= self.policy.max_attempts or too_old:
                    row.status = DeliveryStatus.DEAD
                    if not isinstance(error, PermanentError):
                        row.last_error = (f"gave up after {attempt} attempt(s)"
                                          f"{' and the maximum age' if too_old else ''}: {error.reason}")
                else:
                    wait = self.policy.backoff_s(attempt)
                    if isinstance(error, TransientError) and error.retry_after_s is not None:
                        wait = min(error.retry_after_s, self.policy.retry_max_s)  # the EHR said when
                    row.next_attempt_at = now + timedelta(seconds=wait)
            s.add(row)
            if row.status != DeliveryStatus.PENDING:
                self._supersede_older(s, row)
            self._audit(s, row_id, report_id, attempt, error, row.status)
            status = row.status
        # Ids and status codes only: the reason may quote the EHR, which may quote patient data.
        log.info("ehr delivery attempt", extra={"outbox": row_id, "report": report_id, "attempt": attempt,
                                                "status": status, "http_status": http_status,
                                                "error": type(error).__name__ if error else None})
        return status

    def _audit(self, s: Session, row_id: str, report_id: str, attempt: int, error: DeliveryError | None,
               status: str) -> None:
        audit.record(s, action="E", subtype="delivery", agent_type="system", agent_id=self.worker_id,
                     outcome="0" if error is None else "8", entity_type="DiagnosticReport", entity_id=report_id,
                     detail=f"outbox {row_id} attempt {attempt}: "
                            + ("delivered" if error is None else f"{status}: {error.reason}")[:1000])

    @staticmethod
    def _newest_version(s: Session, row: OutboxDelivery) -> int:
        versions = s.exec(select(col(OutboxDelivery.report_version))
                          .where(col(OutboxDelivery.report_id) == row.report_id)).all()
        return max(versions)

    def _settle_superseded(self, s: Session, row: OutboxDelivery, newer: int) -> None:
        row.status, row.delivered_at, row.claimed_by, row.claimed_until = DeliveryStatus.DELIVERED, utcnow(), None, None
        row.ehr_response = {"superseded_by_version": newer}
        s.add(row)

    @staticmethod
    def _supersede_older(s: Session, row: OutboxDelivery) -> None:
        """Once the newest version is settled, older pending ones must never go out."""
        s.exec(update(OutboxDelivery)
               .where(col(OutboxDelivery.report_id) == row.report_id,
                      col(OutboxDelivery.status) == DeliveryStatus.PENDING,
                      col(OutboxDelivery.report_version) < row.report_version)
               .values(status=DeliveryStatus.DELIVERED, delivered_at=utcnow(), claimed_by=None, claimed_until=None,
                       ehr_response={"superseded_by_version": row.report_version}))


def build_bundle(s: Session, images: ImageStore, report_id: str) -> dict[str, Any]:
    """The report as it is now (the newest version), with everything it refers to. Deleted rows
    are included: a deleted study's report goes out as cancelled."""
    report = ReportRepository(s).get(report_id, include_deleted=True)
    study = StudyRepository(s).get(report.study_id, include_deleted=True)
    patient = PatientRepository(s).get(study.patient_id, include_deleted=True)
    analysis = s.get(Analysis, report.analysis_id)
    if analysis is None:  # a foreign key, and analyses are never deleted; a broken row cannot be sent
        raise NotFound(f"Analysis/{report.analysis_id} of DiagnosticReport/{report_id} not found")
    overlay = None
    if analysis.top3:
        digest = analysis.overlays.get(analysis.top3[0]["finding"])
        if digest:
            overlay = images.get(digest)
    return mapping.to_wire(ehr_transaction(patient, study, analysis, report, overlay))


def start_in_thread(engine: Engine, images: ImageStore, settings: Settings) -> tuple[threading.Thread, threading.Event,
                                                                           DeliveryWorker]:
    """The app's lifespan runs the worker beside the web service."""
    worker = DeliveryWorker(engine, images, EhrClient.from_settings(settings), Policy.from_settings(settings))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="ehr-worker", daemon=True)
    thread.start()
    return thread, stop, worker
