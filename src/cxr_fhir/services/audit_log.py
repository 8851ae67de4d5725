"""The audit trail as an administrator reads it: filtered by who, what and when, newest first."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlmodel import Session, col, select

from ..records.tables import AuditEvent

PAGE = 100
MAX_PAGE = 10**6  # beyond any list; keeps the offset a database integer


@dataclass(frozen=True)
class AuditFilter:
    agent: str = ""
    subtype: str = ""
    action: str = ""
    since: str = ""  # YYYY-MM-DD, inclusive
    until: str = ""  # YYYY-MM-DD, inclusive


@dataclass
class AuditPage:
    events: list[AuditEvent]
    more: bool
    page_no: int
    subtypes: list[str]
    errors: dict[str, str] = field(default_factory=dict)  # filter field -> what is wrong with it


def _day(raw: str) -> datetime | None:
    """Midnight UTC of a YYYY-MM-DD date, None when it is not one."""
    try:
        return datetime.combine(date.fromisoformat(raw.strip()), time(0), tzinfo=UTC)
    except ValueError:
        return None


def audit_page(s: Session, f: AuditFilter, page_no: int) -> AuditPage:
    """One page of events matching the filter; a malformed date is named in ``errors`` and left out."""
    stmt = select(AuditEvent)
    if f.agent.strip():
        stmt = stmt.where(col(AuditEvent.agent_id) == f.agent.strip())
    if f.subtype.strip():
        stmt = stmt.where(col(AuditEvent.subtype) == f.subtype.strip())
    if f.action.strip():
        stmt = stmt.where(col(AuditEvent.action) == f.action.strip()[:1])
    errors: dict[str, str] = {}
    for name, raw in (("since", f.since), ("until", f.until)):
        if not raw.strip():
            continue
        day = _day(raw)
        if day is None:
            errors[name] = "use YYYY-MM-DD"
        elif name == "since":
            stmt = stmt.where(col(AuditEvent.recorded) >= day)
        else:
            stmt = stmt.where(col(AuditEvent.recorded) < day + timedelta(days=1))
    page_no = min(max(1, page_no), MAX_PAGE)
    events = list(s.exec(stmt.order_by(col(AuditEvent.recorded).desc())
                         .offset((page_no - 1) * PAGE).limit(PAGE + 1)).all())
    subtypes = sorted(x for x in s.exec(select(AuditEvent.subtype).distinct()).all() if x is not None)
    return AuditPage(events=events[:PAGE], more=len(events) > PAGE, page_no=page_no, subtypes=subtypes,
                     errors=errors)
