"""AuditEvent: read and search over the append-only audit table (never written through the API)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlmodel import Session, col

from ...domain.text import has_control
from ..tables import AuditEvent
from ...domain.errors import InvalidRequest, NotFound
from . import store
from ...fhir import mapping
from .search import DEFAULT_COUNT
from .search import MAX_COUNT
from .search import paging_links
from .search import whole_number
from .store import match_instant

PARAMS = ("date", "action", "outcome", "entity", "_id", "_count", "_offset", "_format")


def read(s: Session, rid: str) -> dict[str, Any]:
    row = s.get(AuditEvent, rid) if store.is_id(rid) else None
    if row is None:
        raise NotFound(f"AuditEvent/{rid} is not known")
    return mapping.to_wire(mapping.audit_event(row))


def bundle(s: Session, pairs: list[tuple[str, str]], base: str) -> dict[str, Any]:
    stmt = select(AuditEvent)
    count, offset = DEFAULT_COUNT, 0
    for key, value in pairs:
        if has_control(key + value):
            raise InvalidRequest(f"search parameter {key!r} contains control characters")
        if key not in PARAMS:
            raise InvalidRequest(f"unknown search parameter {key!r} for AuditEvent; supported: "
                                     + ", ".join(p for p in PARAMS if p != "_format"))
        values = value.split(",")
        if key == "date":
            stmt = stmt.where(match_instant(AuditEvent.recorded, value))
        elif key == "action":
            stmt = stmt.where(col(AuditEvent.action).in_(values))
        elif key == "outcome":
            stmt = stmt.where(col(AuditEvent.outcome).in_(values))
        elif key == "_id":
            stmt = stmt.where(col(AuditEvent.id).in_(values))
        elif key == "entity":
            conds = []
            for v in values:
                rtype, _, rid = v.rpartition("/")
                conds.append(and_(AuditEvent.entity_type == rtype, AuditEvent.entity_id == rid) if rtype
                             else AuditEvent.entity_id == rid)
            stmt = stmt.where(or_(*conds))
        elif key == "_count":
            count = min(whole_number(key, value, 0), MAX_COUNT)
        elif key == "_offset":
            offset = whole_number(key, value, 0)
    total = s.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    rows = s.execute(stmt.order_by(col(AuditEvent.recorded).desc(), col(AuditEvent.id)).offset(offset).limit(count)
                     ).scalars().all()
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total,
                           "link": paging_links(f"{base}/AuditEvent", pairs, offset, count, total)}
    if rows:
        out["entry"] = [{"fullUrl": f"{base}/AuditEvent/{r.id}", "resource": mapping.to_wire(mapping.audit_event(r)),
                         "search": {"mode": "match"}} for r in rows]
    return out
