"""A search request (query parameters) -> a searchset Bundle, with paging and includes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session

from ...domain.errors import InvalidRequest, TooCostly
from ...domain.text import has_control
from ...fhir.search_params import INCLUDES, PARAMS, REVINCLUDES, SORTABLE
from ...records.tables import FhirResource
from . import store
from .delivery import add_status, newest_statuses

DEFAULT_COUNT, MAX_COUNT = 20, 500
CONTROL = {"_count", "_offset", "_sort", "_summary", "_elements", "_include", "_revinclude", "_total",
           "_format", "_pretty"}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
SUMMARIES = ("count", "false")


MAX_OFFSET = 10**9  # far beyond any result set; keeps the number inside what the database takes


def whole_number(name: str, value: str, low: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {value!r}") from None
    if n < low:
        raise InvalidRequest(f"{name} must be at least {low}")
    if n > MAX_OFFSET:
        raise InvalidRequest(f"{name} must be at most {MAX_OFFSET}")
    return n


# What one search may ask: past these a request is refused (400 naming the limit) before any SQL is
# built, so no query string can make a statement of thousands of ORed conditions.
MAX_PAIRS = 60  # parameter occurrences in one search
MAX_REPEATS = 10  # occurrences of one parameter (ANDed)
MAX_VALUES = 20  # comma-separated values in one occurrence (ORed)
MAX_VALUE_CHARS = 512  # one value


def check_limits(pairs: list[tuple[str, str]]) -> None:
    if len(pairs) > MAX_PAIRS:
        raise TooCostly(f"a search may hold at most {MAX_PAIRS} parameters (this one has {len(pairs)})")
    seen: dict[str, int] = {}
    for key, value in pairs:
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > MAX_REPEATS:
            raise TooCostly(f"search parameter {key[:64]!r} may be repeated at most {MAX_REPEATS} times")
        if len(value) > MAX_VALUE_CHARS:
            raise TooCostly(f"a value of search parameter {key[:64]!r} is longer than {MAX_VALUE_CHARS} characters")
        if value.count(",") >= MAX_VALUES:
            raise TooCostly(f"search parameter {key[:64]!r} may list at most {MAX_VALUES} values")


def parse(resource_type: str, pairs: list[tuple[str, str]], strict: bool = True
          ) -> tuple[store.Query, dict[str, Any]]:
    """Query criteria and the control options (_summary, _elements, _include, _revinclude).

    Lenient (``strict=False``, the default of the REST search as in HAPI): unknown parameters are
    ignored and listed in options["ignored"], so the self link can leave them out. A malformed
    value of a known parameter is always an error."""
    check_limits(pairs)
    query = store.Query()
    options: dict[str, Any] = {"summary": "false", "elements": None, "include": [], "revinclude": [],
                               "ignored": []}
    for key, value in pairs:
        if has_control(key + value):
            # No stored value holds one (writes refuse them), and PostgreSQL cannot compare U+0000.
            raise InvalidRequest(f"search parameter {key!r} contains control characters")
        if not strict and _unknown(resource_type, key):
            options["ignored"].append(key)
            continue
        if key in ("_format", "_pretty"):
            continue
        if key == "_count":
            query.count = min(whole_number("_count", value, 0), MAX_COUNT)
        elif key == "_offset":
            query.offset = whole_number("_offset", value, 0)
        elif key == "_sort":
            for item in value.split(","):
                name = item.lstrip("-")
                if name not in ("_lastUpdated", "_id", *SORTABLE.get(resource_type, [])):
                    raise InvalidRequest(f"cannot sort {resource_type} by {name!r}; sortable: "
                                             + ", ".join(["_lastUpdated", "_id", *SORTABLE.get(resource_type, [])]))
                query.sort.append((name, item.startswith("-")))
        elif key == "_summary":
            if value not in SUMMARIES:
                raise InvalidRequest(f"_summary={value} is not supported; use count or false")
            options["summary"] = value
        elif key == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise InvalidRequest("_total must be none, estimate or accurate")
        elif key == "_elements":
            options["elements"] = [e.strip() for e in value.split(",") if e.strip()]
        elif key in ("_include", "_revinclude"):
            allowed = INCLUDES.get(resource_type, []) if key == "_include" else REVINCLUDES.get(resource_type, [])
            target_ok = value.count(":") == 2 and ":".join(value.split(":")[:2]) in allowed
            if value not in allowed and not target_ok:
                raise InvalidRequest(f"{key}={value} is not supported for {resource_type}; supported: "
                                         + (", ".join(allowed) or "none"))
            options[key[1:]].append(value)
        elif key.startswith("_") and key not in ("_id", "_lastUpdated"):
            raise InvalidRequest(f"search parameter {key} is not supported")
        else:
            query.criteria.append(_criterion(resource_type, key, value))
    return query, options


def _criterion(resource_type: str, key: str, value: str) -> store.Criterion:
    """One search parameter occurrence: name, modifier, chain and its comma-separated values."""
    name, _, modifier = key.partition(":")
    chain = None
    if "." in name:
        name, _, chain = name.partition(".")
    elif "." in modifier:
        modifier, _, chain = modifier.partition(".")
    if name not in ("_id", "_lastUpdated") and name not in PARAMS.get(resource_type, {}):
        raise InvalidRequest(
            f"unknown search parameter {name!r} for {resource_type}; supported: "
            + ", ".join(["_id", "_lastUpdated", *PARAMS.get(resource_type, {})]))
    values = list(store.split_escaped(value, ","))
    if not any(values):
        raise InvalidRequest(f"search parameter {key} has no value")
    return store.Criterion(name, modifier or None, values, chain)


def types_read(resource_type: str, pairs: list[tuple[str, str]]) -> set[str]:
    """Every resource type a search reads besides its own: chained parameters look into their
    target type, _include and _revinclude return other types. The caller checks the scopes for
    each, so a token cannot read (or probe) a type through another one's search."""
    found: set[str] = set()
    for key, value in pairs:
        if key == "_include":
            _, _, rest = value.partition(":")
            param, _, target = rest.partition(":")
            spec = PARAMS.get(resource_type, {}).get(param)
            found |= {target} if target else set(spec.targets if spec else ())
        elif key == "_revinclude" and value:
            found.add(value.split(":")[0])
        elif not key.startswith("_") and "." in key:
            name, _, rest = key.partition(".")
            name, _, modifier = name.partition(":")
            spec = PARAMS.get(resource_type, {}).get(name)
            targets = (modifier,) if modifier else (spec.targets if spec else ())
            found |= set(targets)
            if rest:  # a chain that goes on: subject:Patient.organization... reads further types
                found |= {t for t in PARAMS if f":{t}." in rest}
    # Only real types: a malformed value is refused by parse() with its reason, not here.
    return {t for t in found if t in PARAMS} - {resource_type}


def paging_links(path: str, pairs: list[tuple[str, str]], offset: int, count: int | None, total: int
                 ) -> list[dict[str, str]]:
    """self, and next / previous when there are such pages (``count`` None: self only)."""
    kept = [(k, v) for k, v in pairs if k not in ("_offset", "_format", "_pretty")]

    def link(relation: str, at: int) -> dict[str, str]:
        params = kept + ([("_offset", str(at))] if at else [])
        return {"relation": relation, "url": path + (f"?{urlencode(params)}" if params else "")}

    links = [link("self", offset)]
    if count is not None and offset + count < total:
        links.append(link("next", offset + count))
    if count is not None and offset > 0:
        links.append(link("previous", max(0, offset - count)))
    return links


def _unknown(resource_type: str, key: str) -> bool:
    if key in CONTROL or key in ("_id", "_lastUpdated"):
        return False
    name = key.split(":")[0].split(".")[0]
    return name.startswith("_") or name not in PARAMS.get(resource_type, {})


def _shape(content: dict[str, Any], elements: list[str] | None) -> dict[str, Any]:
    if not elements:
        return content
    keep = {"resourceType", "id", "meta", *elements}
    out = {k: v for k, v in content.items() if k in keep}
    meta = dict(out.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def no_other_type(resource_type: str) -> bool:
    """The reader of a search that has no caller to ask (a storage-level test): matches only."""
    return False


def bundle(s: Session, resource_type: str, pairs: list[tuple[str, str]], base: str, strict: bool = True, *,
           can_read: Callable[[str], bool] = no_other_type) -> dict[str, Any]:
    """The searchset Bundle. ``can_read`` (resource type -> whether the caller may read it) decides
    which included resources are returned: each is checked by the type it IS, whatever the
    _include or _revinclude named, so a reference to another type (stored before references were
    checked, or by any other path) hands out nothing the caller could not read itself. The matches
    are of ``resource_type``, which the caller has checked already."""
    query, options = parse(resource_type, pairs, strict)
    count_only = options["summary"] == "count" or query.count == 0
    matches, total = store.search(s, resource_type, query, count_only=count_only)
    kept = [(k, v) for k, v in pairs if k not in options["ignored"]]
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total,
                           "link": paging_links(f"{base}/{resource_type}", kept, query.offset,
                                                None if count_only else query.count, total)}
    if count_only:
        return out
    included = _included(s, resource_type, matches, options, can_read)
    # The delivery status of every DiagnosticReport on the page, in one query.
    statuses = newest_statuses(s, [r.id for r in (*matches, *included) if r.resource_type == "DiagnosticReport"])
    entries = [_entry(row, statuses, base, "match", options["elements"]) for row in matches]
    entries += [_entry(row, statuses, base, "include", None) for row in included]
    if entries:
        out["entry"] = entries
    return out


def _entry(row: FhirResource, statuses: dict[str, str], base: str, mode: str, elements: list[str] | None
           ) -> dict[str, Any]:
    content = add_status(row.content, statuses)
    return {"fullUrl": f"{base}/{row.resource_type}/{row.id}", "resource": _shape(content, elements),
            "search": {"mode": mode}}


def _included(s: Session, resource_type: str, matches: list[FhirResource], options: dict[str, Any],
              can_read: Callable[[str], bool]) -> list[FhirResource]:
    ids = [m.id for m in matches]
    seen = {(m.resource_type, m.id) for m in matches}
    out: list[FhirResource] = []
    for spec in options["include"]:
        _, param, *target = spec.split(":")
        keys = store.references_from(s, resource_type, ids, param)
        if target:
            keys = [k for k in keys if k.startswith(f"{target[0]}/")]
        # A stored reference may name any type, whatever the parameter's targets: not even looked up.
        out += store.fetch(s, [k for k in keys if can_read(k.partition("/")[0])])
    for spec in options["revinclude"]:
        source, param = spec.split(":")[:2]
        if can_read(source):
            out += store.referring(s, source, param, [f"{resource_type}/{i}" for i in ids])
    unique = []
    for row in out:
        if not can_read(row.resource_type):  # the type of the row itself, the one that is returned
            continue
        if (row.resource_type, row.id) not in seen:
            seen.add((row.resource_type, row.id))
            unique.append(row)
    return unique
