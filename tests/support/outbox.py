"""Driving the outbox worker in a test: every row as it stands, and draining until a condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlmodel import Session, select

from cxr_fhir.outbound.worker import DeliveryWorker
from cxr_fhir.records.tables import OutboxDelivery


def outbox_rows(engine) -> list[OutboxDelivery]:
    with Session(engine) as s:
        return list(s.exec(select(OutboxDelivery).order_by(OutboxDelivery.created_at)).all())


def drain_until(worker: DeliveryWorker, engine, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Run the worker's due deliveries until ``done()``; fail with every row's state past the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.drain()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"not done: {[(r.status, r.attempts, r.last_error) for r in outbox_rows(engine)]}")
