"""The audit trail: one append-only row for every access to patient data, every login and delivery."""

from __future__ import annotations

from typing import overload

from sqlmodel import Session

from ..domain.text import escape_control
from ..records.tables import AuditEvent
from ..storage.fhir import projection
from ..storage.repositories import AuditRepository

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {"0", "4", "8", "12"}  # success, minor failure, serious failure, major failure


def record(session: Session, *, action: str, subtype: str, agent_type: str, agent_id: str | None,
           outcome: str = "0", entity_type: str | None = None, entity_id: str | None = None,
           source_ip: str | None = None, query: str | None = None, detail: str | None = None) -> AuditEvent:
    if action not in ACTIONS or outcome not in OUTCOMES or agent_type not in {"user", "client", "system"}:
        raise ValueError(f"bad audit event: action={action!r} outcome={outcome!r} agent_type={agent_type!r}")
    event = AuditEvent(
        action=action, subtype=_clean(subtype, 32), outcome=outcome, agent_type=agent_type,
        agent_id=_clean(agent_id, 128), source_ip=_clean(source_ip, 64), entity_type=_clean(entity_type, 32),
        entity_id=_clean(entity_id, 64), query=_clean(query), detail=_clean(detail))
    # Its FHIR AuditEvent, in the same transaction: the API searches the trail as any other type.
    projection.audit_event(session, event)
    return AuditRepository(session).record(event)


@overload
def _clean(value: str, limit: int | None = None) -> str: ...
@overload
def _clean(value: str | None, limit: int | None = None) -> str | None: ...


def _clean(value: str | None, limit: int | None = None) -> str | None:
    """What a client sent (a path, a query) as the column can hold it: control characters written as
    escapes (PostgreSQL refuses U+0000) and cut to the column's length, so that no request, however
    malformed, goes unaudited or turns its refusal into a server error."""
    if value is None:
        return None
    value = escape_control(value)  # C0, DEL and C1 (CSI U+009B drives terminals as ESC [ does)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    return value
