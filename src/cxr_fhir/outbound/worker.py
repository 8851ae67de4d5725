"""The outbox worker: claim a due delivery, let its destination's sender send it, record the outcome.

One worker serves every destination it has a sender for (outbound/ehr.py, pacs.py, ris.py); it
claims only rows of those destinations. What the worker guarantees is the same for all of them:

Exactly once in effect: a delivery is claimed by one worker at a time (row lock + lease), so two
workers never send the same row; what a retry after a lost answer sends is recognisably the same
(conditional FHIR entries, fixed SOP Instance UIDs, a fixed HL7 message control id), so the
destination keeps one.

Order per report and destination: only the newest outbox row of a (report, destination) is ever
claimed, and not while another row of that pair is in flight; older rows are marked delivered with
``superseded_by_version``. So an older version can never reach a destination after a newer one.
Destinations do not wait for each other: a PACS that is down does not hold back the EHR.

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Exists, and_, exists, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from ..domain.vocabulary import DeliveryStatus, Destination
from ..records.tables import OutboxDelivery
from ..records.types import utcnow
from ..security import audit
from ..settings import Settings
from ..storage.db import reading, writing
from ..storage.image_store import ImageStore
from .ehr import EhrSender, build_bundle
from .ehr_client import EhrClient
from .errors import DeliveryError, PermanentError, TransientError
from .sender import Sender, Sent

__all__ = ["DeliveryWorker", "Policy", "Sender", "Sent", "build_bundle", "new_worker_id", "start_in_thread"]

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
    """SQL: another outbox row of the same report and destination carries a later version."""
    other = aliased(OutboxDelivery)
    return exists().where(col(other.report_id) == col(OutboxDelivery.report_id),
                          col(other.destination) == col(OutboxDelivery.destination),
                          col(other.report_version) > col(OutboxDelivery.report_version))


def _sibling_in_flight(now: datetime) -> Exists:
    other = aliased(OutboxDelivery)
    return exists().where(col(other.report_id) == col(OutboxDelivery.report_id),
                          col(other.destination) == col(OutboxDelivery.destination),
                          col(other.id) != col(OutboxDelivery.id),
                          col(other.status) == DeliveryStatus.PENDING, col(other.claimed_until) > now)


def _claimable(now: datetime, destinations: list[str]) -> ColumnElement[bool]:
    return and_(col(OutboxDelivery.status) == DeliveryStatus.PENDING, col(OutboxDelivery.next_attempt_at) <= now,
                col(OutboxDelivery.destination).in_(destinations),
                or_(col(OutboxDelivery.claimed_until).is_(None), col(OutboxDelivery.claimed_until) <= now),
                ~_newer_row(), ~_sibling_in_flight(now))


class DeliveryWorker:
    """``senders``: one Sender per destination this worker serves. An ``EhrClient`` alone is taken
    as ``{Destination.EHR: EhrSender(client)}`` (how the EHR-only worker was built before)."""

    def __init__(self, engine: Engine, images: ImageStore, senders: Mapping[Destination, Sender] | EhrClient,
                 policy: Policy, worker_id: str | None = None):
        if isinstance(senders, EhrClient):
            senders = {Destination.EHR: EhrSender(senders)}
        if not senders:
            raise ValueError("a delivery worker needs at least one sender")
        self.engine, self.images, self.policy = engine, images, policy
        self.senders: dict[str, Sender] = {str(d): sender for d, sender in senders.items()}
        self.worker_id = worker_id or new_worker_id()

    @property
    def client(self) -> EhrClient:
        """The EHR client (for callers written when the EHR was the only destination)."""
        sender = self.senders.get(Destination.EHR)
        if not isinstance(sender, EhrSender):
            raise AttributeError("this worker has no EHR sender")
        return sender.client

    def close(self) -> None:
        for sender in self.senders.values():
            sender.close()

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; pending rows left by an earlier run are simply due again."""
        log.info("outbox worker started", extra={"worker": self.worker_id, "destinations": sorted(self.senders)})
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # a database hiccup must not end the worker; try again after a pause
                log.exception("outbox worker iteration failed", extra={"worker": self.worker_id})
                busy = False
            if not busy:
                stop.wait(self.policy.poll_s)
        log.info("outbox worker stopped", extra={"worker": self.worker_id})

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
        """Atomically take one due delivery of a destination served here. PostgreSQL: the candidate
        row is locked FOR UPDATE SKIP LOCKED, so concurrent workers pick different rows without
        waiting. SQLite: the single UPDATE statement runs under the database's one write lock, which
        is as atomic."""
        now = utcnow()
        served = sorted(self.senders)
        # correlate(None): the candidate is picked from the whole table, not from the row being updated.
        candidate = (select(col(OutboxDelivery.id)).where(_claimable(now, served))
                     .order_by(col(OutboxDelivery.next_attempt_at), col(OutboxDelivery.created_at)).limit(1)
                     .correlate(None))
        if self.engine.dialect.name == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True, of=OutboxDelivery)
        stmt = (update(OutboxDelivery)
                # The conditions again: PostgreSQL re-checks them on the locked row at UPDATE time.
                # "id = (subquery)", not "id IN": PostgreSQL then runs the subquery once (an InitPlan);
                # with IN it may re-run it per row and lock one more row each time.
                .where(col(OutboxDelivery.id) == candidate.scalar_subquery(), _claimable(now, served))
                .values(claimed_by=self.worker_id, claimed_until=now + self.policy.lease)
                .returning(col(OutboxDelivery.id)))
        with writing(self.engine) as s:
            return s.exec(stmt).scalars().first()

    # -- deliver --------------------------------------------------------------------------
    def deliver(self, row_id: str) -> str:
        """Send one claimed delivery; returns its new status (pending, delivered or dead)."""
        error: DeliveryError | None = None
        with writing(self.engine) as s:
            row = s.get(OutboxDelivery, row_id)
            if row is None or row.status != DeliveryStatus.PENDING or row.claimed_by != self.worker_id:
                return row.status if row else "gone"
            sender = self.senders[Destination(row.destination)]
            # A newer version queued since the claim wins: never send the older one after it.
            newer = self._newest_version(s, row)
            if newer > row.report_version:
                self._settle_superseded(s, row, newer)
                return DeliveryStatus.DELIVERED
            report_id, attempt = row.report_id, row.attempts + 1
        # The payload is built in a reading unit: decoding a film and rendering objects must not hold
        # SQLite's one write lock, which uploads, C-STOREs and the pages wait on. The row stays ours
        # by its lease meanwhile.
        payload: Any = None
        try:
            with reading(self.engine, timeout_s=None) as s:
                claimed = s.get(OutboxDelivery, row_id)
                if claimed is None:
                    return "gone"
                payload = sender.prepare(s, self.images, claimed)
        except DeliveryError as exc:  # the sender itself says what is wrong (and whether it may pass)
            error = exc
        except Exception as exc:  # our own data cannot make a payload: no retry will fix it
            error = PermanentError(f"cannot build the {sender.payload_name}: {type(exc).__name__}: {exc}")
        result = None
        if error is None:
            try:
                result = sender.send(payload)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:  # a fault in a protocol library: counted like any failed attempt, so
                # it is retried with back-off and dead-lettered at the limits instead of once per lease
                error = TransientError(f"unexpected error while sending: {type(exc).__name__}")
        return self._record(row_id, report_id, attempt, result, error)

    def _record(self, row_id: str, report_id: str, attempt: int, result: Sent | Any | None,
                error: DeliveryError | None) -> str:
        now = utcnow()
        with writing(self.engine) as s:
            row = s.exec(select(OutboxDelivery).where(col(OutboxDelivery.id) == row_id).with_for_update()
                         .execution_options(populate_existing=True)).one()
            if row.status != DeliveryStatus.PENDING:  # settled meanwhile (our lease ran out): keep that, audit ours
                self._audit(s, row, attempt, error, "superseded attempt")
                return row.status
            if row.claimed_by is not None and row.claimed_by != self.worker_id:
                # Our lease ran out and another worker holds the row now: its attempt settles it,
                # so the order of a report's versions stays that worker's to keep.
                self._audit(s, row, attempt, error, "attempt after the lease expired")
                return row.status
            row.attempts, row.claimed_by, row.claimed_until = attempt, None, None
            if error is None:
                assert isinstance(result, Sent)  # deliver() passes the destination's answer whenever there is no error
                status_code = result.status
                row.status, row.delivered_at, row.last_error = DeliveryStatus.DELIVERED, now, None
                row.ehr_response = result.summary
            else:
                status_code = error.status
                self._failed(row, attempt, error, now)
            s.add(row)
            if row.status != DeliveryStatus.PENDING:
                self._supersede_older(s, row)
            self._audit(s, row, attempt, error, row.status)
            status, destination = row.status, row.destination
        # Ids and status codes only: the reason may quote the destination, which may quote patient data.
        log.info("outbox delivery attempt", extra={"outbox": row_id, "report": report_id, "destination": destination,
                                                   "attempt": attempt, "status": status, "http_status": status_code,
                                                   "error": type(error).__name__ if error else None})
        return status

    def _failed(self, row: OutboxDelivery, attempt: int, error: DeliveryError, now: datetime) -> None:
        """A failed attempt: dead letter (refused, too many attempts, too old) or the next attempt."""
        row.last_error = error.reason
        if error.response is not None:
            row.ehr_response = error.response
        elif error.outcome:
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
                wait = min(error.retry_after_s, self.policy.retry_max_s)  # the destination said when
            row.next_attempt_at = now + timedelta(seconds=wait)

    def _audit(self, s: Session, row: OutboxDelivery, attempt: int, error: DeliveryError | None,
               status: str) -> None:
        audit.record(s, action="E", subtype="delivery", agent_type="system", agent_id=self.worker_id,
                     outcome="0" if error is None else "8", entity_type="DiagnosticReport", entity_id=row.report_id,
                     detail=(f"outbox {row.id} ({row.destination}) attempt {attempt}: "
                             + ("delivered" if error is None else f"{status}: {error.reason}"))[:1000])

    @staticmethod
    def _newest_version(s: Session, row: OutboxDelivery) -> int:
        versions = s.exec(select(col(OutboxDelivery.report_version))
                          .where(col(OutboxDelivery.report_id) == row.report_id,
                                 col(OutboxDelivery.destination) == row.destination)).all()
        return max(versions)

    def _settle_superseded(self, s: Session, row: OutboxDelivery, newer: int) -> None:
        row.status, row.delivered_at, row.claimed_by, row.claimed_until = DeliveryStatus.DELIVERED, utcnow(), None, None
        row.ehr_response = {"superseded_by_version": newer}
        s.add(row)

    @staticmethod
    def _supersede_older(s: Session, row: OutboxDelivery) -> None:
        """Once the newest version is settled, older pending ones (same destination) must never go out."""
        s.exec(update(OutboxDelivery)
               .where(col(OutboxDelivery.report_id) == row.report_id,
                      col(OutboxDelivery.destination) == row.destination,
                      col(OutboxDelivery.status) == DeliveryStatus.PENDING,
                      col(OutboxDelivery.report_version) < row.report_version)
               .values(status=DeliveryStatus.DELIVERED, delivered_at=utcnow(), claimed_by=None, claimed_until=None,
                       ehr_response={"superseded_by_version": row.report_version}))


def start_in_thread(engine: Engine, images: ImageStore, settings: Settings,
                    senders: Mapping[Destination, Sender] | None = None,
                    ) -> tuple[threading.Thread, threading.Event, DeliveryWorker]:
    """The app's lifespan runs the worker beside the web service. ``senders``: default, the EHR's."""
    chosen = senders if senders is not None else {Destination.EHR: EhrSender(EhrClient.from_settings(settings))}
    worker = DeliveryWorker(engine, images, chosen, Policy.from_settings(settings))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="outbox-worker", daemon=True)
    thread.start()
    return thread, stop, worker
