"""The audit trail of STOW-RS: one event per request and one per instance, stored or refused.
Only ids, UIDs, codes and statuses go in (no patient data: the reasons come from the refusal
table's sentences and never quote the header)."""

from __future__ import annotations

import logging

from litestar import Request
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from ...records.tables import ApiClient
from ...security import audit
from ...storage.db import writing
from .response import Instance

log = logging.getLogger("cxr_fhir.dicomweb")


def _outcome(status: int) -> str:
    return "0" if status < 400 else ("4" if status < 500 else "8")


def _record(engine: Engine, request: Request, client: ApiClient | None, subtype: str, outcome: str,
            entity_id: str | None, detail: str) -> None:
    try:
        with writing(engine) as s:
            audit.record(s, action="C", subtype=subtype, agent_type="client",
                         agent_id=client.name if client else None, outcome=outcome,
                         entity_type="ImagingStudy", entity_id=entity_id,
                         source_ip=request.client.host if request.client else None, detail=detail[:500])
    except OperationalError:  # the database is down: the request fails for that very reason
        log.error("audit event not recorded: database unavailable", extra={"subtype": subtype})


def record_request(engine: Engine, request: Request, client: ApiClient | None, status: int, detail: str) -> None:
    _record(engine, request, client, "stow-rs", _outcome(status), None,
            f"POST {request.url.path} -> {status}: {detail}")


def record_instance(engine: Engine, request: Request, client: ApiClient, item: Instance) -> None:
    sop = f"SOPInstanceUID={item.sop_instance or '(unknown)'} (part {item.part})"
    if item.failure is None:
        _record(engine, request, client, "stow-instance", "0", item.study_id, f"{sop} {item.code}")
        return
    # A refusal is the sender's (4); the server out of resources or failing is ours (8).
    outcome = "8" if item.retry_after_s is not None or item.code == "processing-failure" else "4"
    _record(engine, request, client, "stow-instance", outcome, None,
            f"{sop} refused, FailureReason 0x{item.failure:04X} ({item.code}): {item.reason}")
