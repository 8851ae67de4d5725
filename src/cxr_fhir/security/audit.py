"""The audit trail: one append-only row for every access to patient data, every login and delivery."""

from __future__ import annotations

from sqlmodel import Session

from ..storage.repositories import AuditRepository
from ..storage.tables import AuditEvent

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {"0", "4", "8", "12"}  # success, minor failure, serious failure, major failure


def record(session: Session, *, action: str, subtype: str, agent_type: str, agent_id: str | None,
           outcome: str = "0", entity_type: str | None = None, entity_id: str | None = None,
           source_ip: str | None = None, query: str | None = None, detail: str | None = None) -> AuditEvent:
    if action not in ACTIONS or outcome not in OUTCOMES or agent_type not in {"user", "client", "system"}:
        raise ValueError(f"bad audit event: action={action!r} outcome={outcome!r} agent_type={agent_type!r}")
    return AuditRepository(session).record(AuditEvent(
        action=action, subtype=subtype, outcome=outcome, agent_type=agent_type, agent_id=agent_id,
        source_ip=source_ip, entity_type=entity_type, entity_id=entity_id, query=query, detail=detail))
