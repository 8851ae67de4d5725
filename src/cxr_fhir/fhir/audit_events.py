"""AuditEvent: read and search over the append-only audit table (never written through the API)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import and_, func, or_, select
from sqlmodel import Session, col

from ..storage.tables import AuditEvent
from . import errors, mapping, store
from .index import BadDate, date_range
from .search import DEFAULT_COUNT, MAX_COUNT
from .store import PREFIXES

PARAMS = ("date", "action", "outcome", "entity", "_id", "_count", "_offset", "_format")


def read(s: Session, rid: str) -> dict[str, Any]:
    row = s.get(AuditEvent, rid) if store.is_id(rid) else None
    if row is None:
        raise errors.not_found(f"AuditEvent/{rid} is not known")
    return mapping.to_wire(mapping.audit_event(row))


def _date(value: str):
    prefix, text = (value[:2], value[2:]) if value[:2] in PREFIXES and value[2:3].isdigit() else ("eq", value)
    try:
        lo, hi = date_range(text)
    except BadDate as exc:
        raise errors.bad_request(str(exc)) from exc
    t = AuditEvent.recorded
    ops = {"eq": and_(t >= lo, t < hi), "ne": or_(t < lo, t >= hi), "gt": t >= hi, "ge": t >= lo,
           "lt": t < lo, "le": t < hi, "sa": t >= hi, "eb": t < lo, "ap": and_(t >= lo, t < hi)}
    return ops[prefix]


def bundle(s: Session, pairs: list[tuple[str, str]], base: str) -> dict[str, Any]:
    stmt = select(AuditEvent)
    count, offset = DEFAULT_COUNT, 0
    for key, value in pairs:
        if any(ord(c) < 32 for c in key + value):
            raise errors.bad_request(f"search parameter {key!r} contains control characters")
        if key not in PARAMS:
            raise errors.bad_request(f"unknown search parameter {key!r} for AuditEvent; supported: "
                                     + ", ".join(p for p in PARAMS if p != "_format"))
        values = value.split(",")
        if key == "date":
            stmt = stmt.where(_date(value))
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
        elif key in ("_count", "_offset"):
            if not value.isdecimal() or int(value) > 10**9:
                raise errors.bad_request(f"{key} must be a whole number (at most 10^9)")
            if key == "_count":
                count = min(int(value), MAX_COUNT)
            else:
                offset = int(value)
    total = s.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    rows = s.execute(stmt.order_by(col(AuditEvent.recorded).desc(), col(AuditEvent.id)).offset(offset).limit(count)
                     ).scalars().all()
    kept = [(k, v) for k, v in pairs if k not in ("_offset", "_format")]

    def link(relation: str, off: int) -> dict[str, str]:
        params = kept + ([("_offset", str(off))] if off else [])
        return {"relation": relation, "url": f"{base}/AuditEvent" + (f"?{urlencode(params)}" if params else "")}

    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total,
                           "link": [link("self", offset)]}
    if offset + count < total:
        out["link"].append(link("next", offset + count))
    if offset:
        out["link"].append(link("previous", max(0, offset - count)))
    if rows:
        out["entry"] = [{"fullUrl": f"{base}/AuditEvent/{r.id}", "resource": mapping.to_wire(mapping.audit_event(r)),
                         "search": {"mode": "match"}} for r in rows]
    return out
