"""History bundles, instance and type, with paging."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from ...storage.db import reading
from ...storage.fhir import search, store
from ...storage.fhir.index import BadDate, date_range
from . import errors, interactions
from .negotiation import base_url, respond, services_of


def history_bundle(request: Request, resource_type: str, rid: str | None) -> Response:
    interactions.provider(resource_type, None)
    pairs = dict(request.query_params.items())
    unknown = set(pairs) - {"_count", "_offset", "_since", "_format"}
    if unknown:
        raise errors.bad_request(f"history does not support {', '.join(sorted(unknown))}")
    count = min(search.whole_number("_count", pairs.get("_count", "20"), 1), search.MAX_COUNT)
    offset = search.whole_number("_offset", pairs.get("_offset", "0"), 0)
    try:
        since = date_range(pairs["_since"])[0] if "_since" in pairs else None
    except BadDate as exc:
        raise errors.bad_request(str(exc)) from exc
    base = base_url(request)
    with reading(services_of(request).engine) as s:
        if rid:
            if store.get_row(s, resource_type, rid) is None:
                raise errors.not_found(f"{resource_type}/{rid} is not known")
        rows, total = store.history(s, resource_type, rid, since, offset, count)
    path = f"{base}/{resource_type}" + (f"/{rid}" if rid else "") + "/_history"
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "total": total,
                           "link": search.paging_links(path, list(request.query_params.multi_items()), offset, count,
                                                       total)}
    entries = []
    for row in rows:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{row.resource_type}/{row.resource_id}"}
        url = f"{row.resource_type}/{row.resource_id}" if row.method != "POST" else row.resource_type
        entry["request"] = {"method": row.method, "url": url}
        entry["response"] = {"status": "204 No Content" if row.method == "DELETE" else
                             ("201 Created" if row.method == "POST" else "200 OK"),
                             "etag": f'W/"{row.version_id}"',
                             "lastModified": row.last_updated.isoformat(timespec="milliseconds")}
        if row.method != "DELETE":
            entry["resource"] = row.content
        entries.append(entry)
    if entries:
        out["entry"] = entries
    return respond(request, out)
