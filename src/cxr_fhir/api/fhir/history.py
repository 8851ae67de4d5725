"""History bundles (instance and type) and Binary reads: the image store's bytes by SHA-256."""

from __future__ import annotations

import base64
from typing import Any

from litestar import Request, Response

from ...imaging.loader import sniff
from ...storage.db import reading
from ...storage.fhir import search, store
from ...storage.fhir.index import BadDate, date_range
from . import errors, interactions
from .negotiation import SECURITY_HEADERS, base_url, respond, services_of


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


def binary(request: Request, sha: str) -> Response:
    services = services_of(request)
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha) or not services.images.exists(sha):
        raise errors.not_found(f"Binary/{sha} is not known")
    data = services.images.get(sha)
    ctype = sniff(data)
    accept = request.headers.get("accept", "")
    if ctype in accept or "image/*" in accept or request.query_params.get("_format") == "binary":
        return Response(content=data, status_code=200, media_type=ctype,
                        headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"})
    return respond(request, {"resourceType": "Binary", "id": sha, "contentType": ctype,
                             "data": base64.b64encode(data).decode()})
