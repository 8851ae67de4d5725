"""Persistence of FHIR resources: current version, history and search index, in one transaction.

Knows FHIR search semantics (token, string, date with prefixes, reference with chaining) but
nothing of HTTP: callers pass parsed parameters and get resources back.
"""

from __future__ import annotations

import re
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, false, func, literal, not_, or_, select, true
from sqlalchemy.orm import Mapped, aliased
from sqlmodel import Session, col

from ...domain.errors import Gone, InvalidRequest, NotFound
from ...fhir.search_params import PARAMS, SearchParam
from ...records.tables import FhirIndex, FhirResource, FhirResourceHistory
from ...records.types import utcnow
from .index import BadDate, date_range, normalise, reference_key, rows

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


# -- writes -------------------------------------------------------------------------------------

def put(s: Session, resource_type: str, resource_id: str, content: dict[str, Any], *, origin: str,
        version: int | None = None, when: datetime | None = None) -> dict[str, Any]:
    """Store a new current version (create or update) and index it. Returns the stored JSON."""
    when = when or utcnow()
    row = s.get(FhirResource, (resource_type, resource_id), with_for_update=True)
    if version is None or (row is not None and version <= row.version_id):
        # Never reuse a version number: history keeps every one.
        version = (row.version_id + 1) if row is not None else (version or 1)
    content = _versioned(resource_type, resource_id, content, version, when)
    if row is None:
        row = FhirResource(resource_type=resource_type, id=resource_id, version_id=version, last_updated=when,
                           origin=origin, content=content)
    else:
        row.version_id, row.last_updated, row.content, row.deleted = version, when, content, False
    s.add(row)
    s.add(FhirResourceHistory(resource_type=resource_type, resource_id=resource_id, version_id=version,
                              method="PUT" if version > 1 else "POST", last_updated=when, content=content))
    s.execute(delete(FhirIndex).where(col(FhirIndex.resource_type) == resource_type,
                                      col(FhirIndex.resource_id) == resource_id))
    s.add_all(rows(resource_type, resource_id, content))
    s.flush()
    return content


def _versioned(resource_type: str, resource_id: str, content: dict[str, Any], version: int, when: datetime
               ) -> dict[str, Any]:
    meta = {k: v for k, v in content.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    return {"resourceType": resource_type, "id": resource_id,
            "meta": {"versionId": str(version), "lastUpdated": _instant(when), **deepcopy(meta)},
            **{k: deepcopy(v) for k, v in content.items() if k not in ("resourceType", "id", "meta")}}


def insert(s: Session, resource_type: str, resource_id: str, content: dict[str, Any], *, origin: str,
           when: datetime) -> dict[str, Any]:
    """Store the first and only version of a resource known to be new (an audit event, whose id was
    just made): no lookup, no old index to clear, nothing flushed here (the caller's next flush or
    commit writes it with the rest). Returns the stored JSON."""
    content = _versioned(resource_type, resource_id, content, 1, when)
    s.add(FhirResource(resource_type=resource_type, id=resource_id, version_id=1, last_updated=when,
                       origin=origin, content=content))
    s.add(FhirResourceHistory(resource_type=resource_type, resource_id=resource_id, version_id=1, method="POST",
                              last_updated=when, content=content))
    s.add_all(rows(resource_type, resource_id, content))
    return content


def mark_deleted(s: Session, resource_type: str, resource_id: str, version: int | None = None,
                 when: datetime | None = None) -> int:
    """Logical delete: a new version that is a tombstone; history keeps the earlier ones."""
    row = s.get(FhirResource, (resource_type, resource_id), with_for_update=True)
    if row is None or row.deleted:
        return row.version_id if row else 0
    when = when or utcnow()
    row.version_id = max(version or 0, row.version_id + 1)
    row.deleted, row.last_updated = True, when
    s.add(row)
    s.add(FhirResourceHistory(resource_type=resource_type, resource_id=resource_id, version_id=row.version_id,
                              method="DELETE", last_updated=when,
                              content={"resourceType": resource_type, "id": resource_id}))
    s.execute(delete(FhirIndex).where(col(FhirIndex.resource_type) == resource_type,
                                      col(FhirIndex.resource_id) == resource_id))
    s.flush()
    return row.version_id


# -- reads --------------------------------------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_id(value: str) -> bool:
    """A FHIR logical id; nothing else can be stored (writes validate the id), so nothing else is looked up."""
    return bool(_ID.fullmatch(value))


def get_row(s: Session, resource_type: str, resource_id: str, lock: bool = False) -> FhirResource | None:
    """``lock``: for a check-then-write (If-Match), so no other writer slips in between."""
    if not is_id(resource_id):  # a path like '../x' or '\x00' names nothing (and would upset PostgreSQL)
        return None
    return s.get(FhirResource, (resource_type, resource_id), with_for_update=lock,
                 populate_existing=lock)


def read(s: Session, resource_type: str, resource_id: str) -> FhirResource:
    row = get_row(s, resource_type, resource_id)
    if row is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    if row.deleted:
        raise Gone(f"{resource_type}/{resource_id} was deleted")
    return row


def vread(s: Session, resource_type: str, resource_id: str, version: int) -> FhirResourceHistory:
    row = None if not is_id(resource_id) or version > 2**31 - 1 else s.execute(select(FhirResourceHistory).where(
        col(FhirResourceHistory.resource_type) == resource_type, col(FhirResourceHistory.resource_id) == resource_id,
        col(FhirResourceHistory.version_id) == version)).scalars().first()
    if row is None:
        raise NotFound(f"{resource_type}/{resource_id}/_history/{version} is not known")
    if row.method == "DELETE":
        raise Gone(f"{resource_type}/{resource_id}/_history/{version} is a deletion")
    return row


def history(s: Session, resource_type: str | None, resource_id: str | None, since: datetime | None,
            offset: int, count: int) -> tuple[list[FhirResourceHistory], int]:
    stmt = select(FhirResourceHistory)
    if resource_type:
        stmt = stmt.where(col(FhirResourceHistory.resource_type) == resource_type)
    if resource_id:
        stmt = stmt.where(col(FhirResourceHistory.resource_id) == resource_id)
    if since:
        stmt = stmt.where(col(FhirResourceHistory.last_updated) >= since)
    total = s.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    found = s.execute(stmt.order_by(col(FhirResourceHistory.last_updated).desc(),
                                 col(FhirResourceHistory.pk).desc()).offset(offset).limit(count)).scalars().all()
    return list(found), total


# -- search -------------------------------------------------------------------------------------

@dataclass
class Criterion:
    """One search parameter occurrence: values are ORed, criteria are ANDed."""

    name: str
    modifier: str | None
    values: list[str]
    chain: str | None = None  # subject:Patient.family -> chain 'family' (with modifier 'Patient')


@dataclass
class Query:
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    offset: int = 0
    count: int = 20


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` unless escaped with a backslash; unescape \\, \\| \\$ \\\\ in the parts."""
    parts, buf, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _match_token(ix: type[FhirIndex], value: str) -> ColumnElement[bool]:
    parts = split_escaped(value, "|")
    if len(parts) == 1:
        return col(ix.value) == _unescape(parts[0])
    if len(parts) != 2:
        raise InvalidRequest(f"bad token {value!r}: use [system]|[code]")
    system, code = _unescape(parts[0]), _unescape(parts[1])
    if not system and not code:
        raise InvalidRequest("a token needs a system or a code")
    conds: list[ColumnElement[bool]] = []
    conds.append(col(ix.system) == system if system else col(ix.system).is_(None))
    if code:
        conds.append(col(ix.value) == code)
    return and_(*conds)


def _match_string(ix: type[FhirIndex], value: str, modifier: str | None) -> ColumnElement[bool]:
    text = _unescape(value)
    if modifier == "exact":
        return col(ix.raw) == text
    needle = normalise(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{needle}%" if modifier == "contains" else f"{needle}%"
    return col(ix.value).like(pattern, escape="\\")


def _split_prefix(value: str) -> tuple[str, str]:
    if value[:2] in PREFIXES and value[2:3].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _prefixed_range(value: str) -> tuple[str, datetime, datetime]:
    prefix, text = _split_prefix(value)
    try:
        return (prefix, *date_range(text))
    except BadDate as exc:
        raise InvalidRequest(str(exc)) from exc


def match_date(lo_col: Mapped[datetime | None], hi_col: Mapped[datetime | None], value: str
               ) -> ColumnElement[bool]:
    """A date search value (with its prefix) against a stored interval [lo, hi)."""
    prefix, p_lo, p_hi = _prefixed_range(value)
    contained = and_(lo_col >= p_lo, hi_col <= p_hi)
    return {
        "eq": contained,
        "ne": not_(contained),
        "gt": hi_col > p_hi,
        "lt": lo_col < p_lo,
        "ge": or_(hi_col > p_hi, contained),
        "le": or_(lo_col < p_lo, contained),
        "sa": lo_col >= p_hi,
        "eb": hi_col <= p_lo,
        "ap": and_(lo_col < p_hi, hi_col > p_lo),
    }[prefix]


def match_instant(column: Mapped[datetime], value: str) -> ColumnElement[bool]:
    """A date search value against a stored instant (lastUpdated, an audit event's time)."""
    prefix, p_lo, p_hi = _prefixed_range(value)
    within = and_(column >= p_lo, column < p_hi)
    return {"eq": within, "ap": within, "ne": not_(within), "gt": column >= p_hi, "sa": column >= p_hi,
            "ge": column >= p_lo, "lt": column < p_lo, "eb": column < p_lo, "le": column < p_hi}[prefix]


def _match_reference(ix: type[FhirIndex], value: str, param: SearchParam, modifier: str | None
                     ) -> ColumnElement[bool]:
    ref = _unescape(value)
    if "/" in ref:
        return col(ix.value) == reference_key(ref)
    targets = (modifier,) if modifier else param.targets
    if len(targets) != 1:
        raise InvalidRequest(f"{param.name}={ref!r}: give the type, e.g. {param.targets[0]}/{ref}")
    return col(ix.value) == f"{targets[0]}/{ref}"


def _criterion(resource_type: str, c: Criterion, id_col: Mapped[str]) -> ColumnElement[bool]:
    """A SQL condition over FhirResource for one criterion (values ORed)."""
    if c.name == "_id":
        return id_col.in_([_unescape(v) for v in c.values])
    if c.name == "_lastUpdated":
        return or_(*(match_instant(col(FhirResource.last_updated), v) for v in c.values))
    param = PARAMS.get(resource_type, {}).get(c.name)
    if param is None:
        raise InvalidRequest(f"unknown search parameter {c.name!r} for {resource_type}; "
                                 f"supported: {', '.join(['_id', '_lastUpdated', *PARAMS.get(resource_type, {})])}")
    ix = aliased(FhirIndex)
    base = [col(ix.resource_type) == resource_type, col(ix.resource_id) == id_col, col(ix.param) == c.name]
    if c.modifier == "missing":
        present = exists(select(col(ix.pk)).where(*base))
        flags = {v.lower() for v in c.values}
        if flags - {"true", "false"} or len(flags) != 1:
            raise InvalidRequest(f"{c.name}:missing takes true or false")
        return not_(present) if "true" in flags else present
    modifiers: dict[str, set[str | None]] = {"token": {None, "not"}, "string": {None, "exact", "contains"},
                                             "date": {None}, "reference": {None, *param.targets}}
    allowed = modifiers[param.type]
    if c.modifier not in allowed:
        raise InvalidRequest(f"modifier :{c.modifier} is not supported on {c.name} ({param.type})")
    if c.chain:
        if param.type != "reference":
            raise InvalidRequest(f"{c.name} is not a reference and cannot be chained")
        targets = (c.modifier,) if c.modifier else param.targets
        if len(targets) != 1:
            raise InvalidRequest(f"chain on {c.name}: name the type, e.g. {c.name}:{param.targets[0]}.{c.chain}")
        target = targets[0]
        chain_name, _, chain_mod = c.chain.partition(":")
        inner = _criterion(target, Criterion(chain_name, chain_mod or None, c.values), col(FhirResource.id))
        inner_ids = select(literal(f"{target}/") + col(FhirResource.id)).where(
            col(FhirResource.resource_type) == target, col(FhirResource.deleted) == false(), inner)
        return exists(select(col(ix.pk)).where(*base, col(ix.value).in_(inner_ids)))
    if param.type == "token":
        match = or_(*(_match_token(ix, v) for v in c.values))
        if c.modifier == "not":
            return not_(exists(select(col(ix.pk)).where(*base, match)))
    elif param.type == "string":
        match = or_(*(_match_string(ix, v, c.modifier) for v in c.values))
    elif param.type == "date":
        match = or_(*(match_date(col(ix.date_lo), col(ix.date_hi), v) for v in c.values))
    else:
        match = or_(*(_match_reference(ix, v, param, c.modifier) for v in c.values))
    return exists(select(col(ix.pk)).where(*base, match))


def _sort_key(resource_type: str, name: str, descending: bool) -> ColumnElement[Any] | Mapped[Any]:
    if name == "_lastUpdated":
        return col(FhirResource.last_updated)
    if name == "_id":
        return col(FhirResource.id)
    param = PARAMS.get(resource_type, {}).get(name)
    if param is None or param.type not in ("date", "string", "token"):
        raise InvalidRequest(f"cannot sort {resource_type} by {name!r}")
    ix = aliased(FhirIndex)
    column: Mapped[Any] = {"date": col(ix.date_hi) if descending else col(ix.date_lo), "string": col(ix.value),
                           "token": col(ix.value)}[param.type]
    agg = func.max(column) if descending else func.min(column)
    return (select(agg).where(col(ix.resource_type) == resource_type, col(ix.resource_id) == col(FhirResource.id),
                              col(ix.param) == name).scalar_subquery())


def search(s: Session, resource_type: str, query: Query, count_only: bool = False
           ) -> tuple[list[FhirResource], int]:
    conds = [col(FhirResource.resource_type) == resource_type, col(FhirResource.deleted) == false()]
    conds += [_criterion(resource_type, c, col(FhirResource.id)) for c in query.criteria]
    where = and_(true(), *conds)
    total = s.execute(select(func.count()).select_from(FhirResource).where(where)).scalar_one()
    if count_only:
        return [], total
    order: list[ColumnElement[Any] | Mapped[Any]] = []
    for name, descending in query.sort:
        key = _sort_key(resource_type, name, descending)
        order.append(key.desc().nulls_last() if descending else key.asc().nulls_last())
    order += [col(FhirResource.last_updated).desc(), col(FhirResource.id)]
    found = s.execute(select(FhirResource).where(where).order_by(*order)
                   .offset(query.offset).limit(query.count)).scalars().all()
    return list(found), total


def references_from(s: Session, resource_type: str, ids: list[str], param: str) -> list[str]:
    """The 'Type/id' values of a reference parameter over some resources (for _include)."""
    if not ids:
        return []
    stmt = select(col(FhirIndex.value)).where(col(FhirIndex.resource_type) == resource_type,
                                              col(FhirIndex.resource_id).in_(ids), col(FhirIndex.param) == param)
    return sorted({v for v in s.execute(stmt).scalars().all() if v})


def fetch(s: Session, keys: list[str]) -> list[FhirResource]:
    """Current, non-deleted resources by 'Type/id' (unknown ones are skipped)."""
    out = []
    for key in keys:
        rtype, _, rid = key.partition("/")
        row = get_row(s, rtype, rid)
        if row is not None and not row.deleted:
            out.append(row)
    return out


def referring(s: Session, resource_type: str, param: str, keys: list[str]) -> list[FhirResource]:
    """Resources of a type whose reference parameter points at any of the keys (for _revinclude)."""
    if not keys:
        return []
    stmt = (select(FhirResource).where(
        col(FhirResource.resource_type) == resource_type, col(FhirResource.deleted) == false(),
        exists(select(col(FhirIndex.pk)).where(col(FhirIndex.resource_type) == resource_type,
                                               col(FhirIndex.resource_id) == col(FhirResource.id),
                                               col(FhirIndex.param) == param,
                                               col(FhirIndex.value).in_(keys))))
            .order_by(col(FhirResource.id)))
    return list(s.execute(stmt).scalars().all())
