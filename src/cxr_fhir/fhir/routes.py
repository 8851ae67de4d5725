"""The FHIR R4 REST API under /fhir: authentication, content negotiation, headers and audit.

The handlers are thin: they authenticate the bearer token, check its scopes, parse the request,
and hand over to interactions / search / transactions / analyze on one database session.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import parse_qsl, urlencode

from anyio import to_thread
from litestar import Request, Response, Router, delete, get, post, put
from litestar.exceptions import HTTPException
from sqlalchemy.exc import OperationalError

from ..imaging.loader import sniff
from ..security import audit
from ..security.clients import allows, authenticate
from ..storage.db import session_scope
from ..storage.tables import ApiClient
from . import analyze, audit_events, errors, interactions, openapi, search, store, transactions
from .capability import capability_statement
from .delivery import with_delivery_status
from .index import BadDate, date_range
from .interactions import Result
from .providers import Actor

log = logging.getLogger("cxr_fhir.fhir")

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
STARTED = datetime.now(UTC).isoformat(timespec="seconds")
# An API answer is data, never a page: nothing in it may run, frame or be cached by a proxy.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
                    "Referrer-Policy": "no-referrer"}
INTERACTION_ACTION = {"read": "R", "vread": "R", "search-type": "E", "history-instance": "R",
                      "history-type": "R", "create": "C", "update": "U", "delete": "D", "transaction": "E",
                      "batch": "E", "operation": "E", "capabilities": "R"}


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _services(request: Request) -> Any:
    return request.app.state.services


# -- content negotiation --------------------------------------------------------------------------

def _response_type(request: Request) -> str:
    """The JSON media type to answer with, or 406 when the client accepts no JSON."""
    fmt = request.query_params.get("_format")
    if fmt:
        if fmt in ("json", *JSON_TYPES):
            return FHIR_JSON if fmt != "application/json" else "application/json"
        raise errors.FhirError(406, f"_format={fmt} is not supported; this server speaks application/fhir+json",
                               "not-supported")
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return FHIR_JSON
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if any(k in ("*/*", "application/*", FHIR_JSON, "application/json+fhir") for k in kinds):
        return FHIR_JSON
    if "application/json" in kinds:
        return "application/json"
    raise errors.FhirError(406, f"cannot answer with {accept!r}; this server speaks application/fhir+json",
                           "not-supported")


def _json_body(request: Request, data: bytes) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise errors.FhirError(415, f"Content-Type {ctype or '(none)'!r} is not supported; send "
                                    "application/fhir+json", "not-supported")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        body = None
    if body is None and data.strip() != b"null" or _too_deep(body):
        raise errors.bad_request(f"the body nests deeper than {MAX_DEPTH} levels") from None
    return body


MAX_DEPTH = 64  # a Bundle of resources with extensions needs a fraction of this


def _too_deep(value: Any) -> bool:
    """Whether JSON nests deeper than MAX_DEPTH (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def respond(request: Request, body: dict[str, Any] | bytes | None, status: int = 200,
            headers: dict[str, str] | None = None, media_type: str | None = None) -> Response:
    if isinstance(body, bytes):
        content = body
    elif body is None:
        content = b""
    else:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    mtype = media_type or (_safe_type(request) + "; charset=utf-8")
    return Response(content=content, status_code=status, media_type=mtype, headers={**SECURITY_HEADERS,
                                                                                    **(headers or {})})


def _safe_type(request: Request) -> str:
    try:
        return _response_type(request)
    except errors.FhirError:
        return FHIR_JSON


def _resource_headers(request: Request, result: Result) -> dict[str, str]:
    headers: dict[str, str] = {}
    if result.version:
        headers["ETag"] = f'W/"{result.version}"'
    if result.last_modified:
        headers["Last-Modified"] = format_datetime(result.last_modified.astimezone(UTC), usegmt=True)
    if result.location and result.status in (200, 201) and result.resource_type:
        headers["Location" if result.created else "Content-Location"] = f"{base_url(request)}/{result.location}"
    return headers


def _if_match(request: Request) -> int | None:
    return transactions.version_from_etag(request.headers.get("if-match"))


def _written(request: Request, result: Result) -> Response:
    """create / update answer, honouring Prefer: return=minimal | representation | OperationOutcome."""
    prefer = request.headers.get("prefer", "")
    headers = _resource_headers(request, result)
    if "return=minimal" in prefer:
        return respond(request, None, result.status, headers)
    if "return=OperationOutcome" in prefer:
        verb = "created" if result.created else "updated"
        return respond(request, errors.outcome("information", "informational", f"{result.location} {verb}"),
                       result.status, headers)
    return respond(request, result.resource, result.status, headers)


# -- authentication, authorisation, audit -----------------------------------------------------------

def _client(request: Request) -> ApiClient:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.FhirError(401, "a bearer token is required (Authorization: Bearer <token>)", "login",
                               headers={"WWW-Authenticate": 'Bearer realm="cxr-fhir"'})
    with session_scope(_services(request).engine) as s:
        client = authenticate(s, token.strip())
    if client is None:
        raise errors.FhirError(401, "the bearer token is not valid or was revoked", "login",
                               headers={"WWW-Authenticate": 'Bearer realm="cxr-fhir", error="invalid_token"'})
    return client


# The audit trail is for administrators: only a scope that names it opens it, never a wildcard.
EXPLICIT_ONLY = {"AuditEvent"}


def _require_criteria(client: ApiClient, resource_type: str, query: str) -> None:
    """Search criteria (a search, If-None-Exist, a conditional update) may read other types."""
    if query:
        for other in search.types_read(resource_type, parse_qsl(query, keep_blank_values=True)):
            require(client, other, "read")


def require(client: ApiClient, resource_type: str, access: str) -> None:
    if resource_type in EXPLICIT_ONLY:
        if f"system/{resource_type}.{access}" not in client.scopes and f"system/{resource_type}.*" not in client.scopes:
            raise errors.FhirError(403, f"{resource_type} needs a scope that names it (system/{resource_type}."
                                        f"{access}); wildcards do not open it", "forbidden")
        return
    if not allows(client.scopes, resource_type, access):
        raise errors.FhirError(403, f"the token's scopes do not allow {access} on {resource_type} "
                                    f"(needs system/{resource_type}.{access})", "forbidden")


def _audit(request: Request, client: ApiClient | None, interaction: str, resource_type: str | None,
           resource_id: str | None, status: int, detail: str | None = None) -> None:
    outcome = "0" if status < 400 else ("4" if status < 500 else "8")
    query = request.url.query or None
    try:
        with session_scope(_services(request).engine) as s:
            audit.record(s, action=INTERACTION_ACTION.get(interaction, "E"), subtype=interaction,
                         agent_type="client", agent_id=client.name if client else None, outcome=outcome,
                         entity_type=resource_type, entity_id=resource_id,
                         source_ip=request.client.host if request.client else None,
                         query=query, detail=detail)
    except OperationalError:
        # The database is down: the request has failed for the same reason; say so in the log.
        log.error("audit event not recorded: database unavailable",
                  extra={"interaction": interaction, "status": status})


def _guarded(request: Request, interaction: str, resource_type: str | None, resource_id: str | None,
             access: str | None, work: Callable[[ApiClient], Response],
             audit_resource: str | None = None) -> Response:
    client = None
    try:
        if resource_type != "Binary":  # Binary answers with the image itself when asked
            _response_type(request)
        client = _client(request)
        if access and resource_type:
            require(client, resource_type, access)
        response = work(client)
    except errors.FhirError as exc:
        _audit(request, client, interaction, audit_resource or resource_type, resource_id, exc.status,
               exc.diagnostics[:500])
        raise
    _audit(request, client, interaction, audit_resource or resource_type, resource_id, response.status_code)
    return response


def _actor(client: ApiClient) -> Actor:
    return Actor(f"client:{client.name}")


# -- handlers -------------------------------------------------------------------------------------

@get("/metadata", sync_to_thread=False)
def metadata(request: Request) -> Response:
    _response_type(request)
    return respond(request, capability_statement(base_url(request), package_version("cxr-fhir"), STARTED))


@post("/", operation_class=openapi.BUNDLE_BODY)
async def batch_or_transaction(request: Request) -> Response:
    data = await request.body()
    return await to_thread.run_sync(_batch_or_transaction, request, data)


def _batch_or_transaction(request: Request, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        bundle = _json_body(request, data)
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        for entry in entries if isinstance(entries, list) else []:  # the shape is checked in transactions
            req = entry.get("request") if isinstance(entry, dict) else None
            req = req if isinstance(req, dict) else {}
            url = str(req.get("url", ""))
            try:  # the very parser the entry will run with, so no spelling of a URL escapes the check
                rtype, _, _, pairs = transactions.split_url(url)
            except errors.FhirError:
                continue  # refused with its reason when the Bundle is processed
            require(client, rtype, "read" if req.get("method") in ("GET", "HEAD") else "write")
            _require_criteria(client, rtype, urlencode(pairs))
            _require_criteria(client, rtype, str(req.get("ifNoneExist") or ""))
        response, done = transactions.process(_services(request).engine, _services(request), bundle,
                                              _actor(client), base_url(request))
        _audit_entries(request, client, done)
        return respond(request, response)

    return _guarded(request, "transaction", None, None, None, work, audit_resource="Bundle")


ENTRY_INTERACTION = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}


def _audit_entries(request: Request, client: ApiClient, done: list[tuple[dict[str, Any], int]]) -> None:
    """Each entry of a batch or transaction is an access of its own, audited as such."""
    with session_scope(_services(request).engine) as s:
        for req, status in done:
            rtype, rid, _, _ = transactions.split_url(req["url"])
            interaction = ENTRY_INTERACTION[req["method"]] if rid or req["method"] != "GET" else "search-type"
            audit.record(s, action=INTERACTION_ACTION[interaction], subtype=interaction, agent_type="client",
                         agent_id=client.name, outcome="0" if status < 400 else "4", entity_type=rtype,
                         entity_id=rid, source_ip=request.client.host if request.client else None)


@get("/{resource_type:str}", sync_to_thread=True)
def search_type(request: Request, resource_type: openapi.ResourceType) -> Response:
    pairs = list(request.query_params.multi_items())

    def work(client: ApiClient) -> Response:
        with session_scope(_services(request).engine) as s:
            if resource_type == "AuditEvent":
                return respond(request, audit_events.bundle(s, pairs, base_url(request)))
            interactions.provider(resource_type, None)
            for other in search.types_read(resource_type, pairs):
                require(client, other, "read")
            strict = "handling=strict" in request.headers.get("prefer", "")
            return respond(request, search.bundle(s, resource_type, pairs, base_url(request), strict))

    return _guarded(request, "search-type", resource_type, None, "read", work)


@post("/{resource_type:str}", operation_class=openapi.RESOURCE_BODY)
async def create(request: Request, resource_type: openapi.ResourceType) -> Response:
    data = await request.body()
    return await to_thread.run_sync(_create, request, resource_type, data)


def _create(request: Request, resource_type: str, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        body = _json_body(request, data)
        _require_criteria(client, resource_type, request.headers.get("if-none-exist") or "")
        with session_scope(_services(request).engine) as s:
            result = interactions.create(s, _services(request), resource_type, body, _actor(client),
                                         request.headers.get("if-none-exist"))
        return _written(request, result)

    return _guarded(request, "create", resource_type, None, "write", work)


@put("/{resource_type:str}", operation_class=openapi.RESOURCE_BODY)
async def conditional_update(request: Request, resource_type: openapi.ResourceType) -> Response:
    data = await request.body()
    return await to_thread.run_sync(_conditional_update, request, resource_type, data)


def _conditional_update(request: Request, resource_type: str, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        body = _json_body(request, data)
        _require_criteria(client, resource_type, request.url.query)
        with session_scope(_services(request).engine) as s:
            result = interactions.conditional_update(s, _services(request), resource_type,
                                                     list(request.query_params.multi_items()), body, _actor(client))
        return _written(request, result)

    return _guarded(request, "update", resource_type, None, "write", work)


@get("/{resource_type:str}/_history", sync_to_thread=True)
def history_type(request: Request, resource_type: openapi.ResourceType) -> Response:
    return _guarded(request, "history-type", resource_type, None, "read",
                    lambda client: _history(request, resource_type, None))


@get("/{resource_type:str}/{rid:str}", sync_to_thread=True)
def read(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    if resource_type == "Binary":
        return _guarded(request, "read", "Binary", rid, "read", lambda client: _binary(request, rid))

    def work(client: ApiClient) -> Response:
        if resource_type == "OperationDefinition":
            if rid != analyze.OPERATION_ID:
                raise errors.not_found(f"OperationDefinition/{rid} is not known")
            return respond(request, analyze.OPERATION_DEFINITION)
        with session_scope(_services(request).engine) as s:
            if resource_type == "AuditEvent":
                return respond(request, audit_events.read(s, rid))
            result = interactions.read(s, resource_type, rid)
            body = with_delivery_status(s, result.resource)
        return respond(request, body, 200, _resource_headers(request, result))

    access = None if resource_type == "OperationDefinition" else "read"
    return _guarded(request, "read", resource_type, rid, access, work)


@put("/{resource_type:str}/{rid:str}", operation_class=openapi.RESOURCE_BODY)
async def update(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    data = await request.body()
    return await to_thread.run_sync(_update, request, resource_type, rid, data)


def _update(request: Request, resource_type: str, rid: str, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        body = _json_body(request, data)
        with session_scope(_services(request).engine) as s:
            result = interactions.update(s, _services(request), resource_type, rid, body, _actor(client),
                                         _if_match(request))
        return _written(request, result)

    return _guarded(request, "update", resource_type, rid, "write", work)


@delete("/{resource_type:str}/{rid:str}", sync_to_thread=True, status_code=200)
def delete_instance(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    def work(client: ApiClient) -> Response:
        with session_scope(_services(request).engine) as s:
            result = interactions.delete(s, _services(request), resource_type, rid, _actor(client),
                                         _if_match(request))
        headers = {"ETag": f'W/"{result.version}"'} if result.version else {}
        return respond(request, result.resource, 200, headers)

    return _guarded(request, "delete", resource_type, rid, "write", work)


@get("/{resource_type:str}/{rid:str}/_history", sync_to_thread=True)
def history_instance(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    return _guarded(request, "history-instance", resource_type, rid, "read",
                    lambda client: _history(request, resource_type, rid))


@get("/{resource_type:str}/{rid:str}/_history/{vid:str}", sync_to_thread=True)
def vread(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid, vid: openapi.Vid) -> Response:
    def work(client: ApiClient) -> Response:
        with session_scope(_services(request).engine) as s:
            result = interactions.vread(s, resource_type, rid, vid)
        return respond(request, result.resource, 200, _resource_headers(request, result))

    return _guarded(request, "vread", resource_type, rid, "read", work)


@post("/ImagingStudy/$analyze", operation_class=openapi.ANALYZE_BODY)
async def analyze_operation(request: Request) -> Response:
    data = await request.body()
    return await to_thread.run_sync(_analyze_operation, request, data)


def _analyze_operation(request: Request, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        for rtype in ("ImagingStudy", "DiagnosticReport", "Observation"):
            require(client, rtype, "write")
        services = _services(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in analyze.IMAGE_TYPES:
            image, subject = data, request.query_params.get("subject")
        elif ctype in JSON_TYPES:
            image, subject = analyze.from_parameters(_json_body(request, data))
        else:
            raise errors.FhirError(415, f"Content-Type {ctype or '(none)'!r}: send a Parameters resource "
                                        "(application/fhir+json) or the image (" + ", ".join(analyze.IMAGE_TYPES)
                                   + ")", "not-supported")
        if len(image) > services.settings.max_upload_bytes:
            raise errors.FhirError(413, f"the image is larger than {services.settings.max_upload_bytes} bytes",
                                   "too-costly")
        if not subject:
            require(client, "Patient", "write")  # the patient may be registered from the DICOM header
        start = time.perf_counter()
        bundle, stages_ms = analyze.run(services, image, subject, _actor(client).name, base_url(request))
        return respond(request, bundle, 200, {"Server-Timing": analyze.server_timing(
            stages_ms, (time.perf_counter() - start) * 1000)})

    return _guarded(request, "operation", "ImagingStudy", None, None, work)


# -- helpers for the handlers ---------------------------------------------------------------------

def _history(request: Request, resource_type: str, rid: str | None) -> Response:
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
    with session_scope(_services(request).engine) as s:
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


def _binary(request: Request, sha: str) -> Response:
    services = _services(request)
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


# -- errors as OperationOutcome -------------------------------------------------------------------

def fhir_error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, errors.FhirError):
        return respond(request, exc.outcome(), exc.status, exc.headers)
    if isinstance(exc, HTTPException):
        code = {404: "not-found", 405: "not-supported", 413: "too-costly", 401: "login", 403: "forbidden"}
        status = exc.status_code
        return respond(request, errors.FhirError(status, str(exc.detail), code.get(status, "invalid")).outcome(),
                       status)
    if isinstance(exc, OperationalError):
        import logging
        # The driver's message only ("database is locked", "connection refused"), never the statement.
        logging.getLogger("cxr_fhir.fhir").warning("database error answered 503", extra={
            "path": request.url.path, "error": str(getattr(exc, "orig", exc)).splitlines()[0][:200]})
        return respond(request, errors.FhirError(503, "the database is unavailable; try again shortly",
                                                 "transient").outcome(), 503, {"Retry-After": "5"})
    log.exception("unhandled error", extra={"path": request.url.path})
    return respond(request, errors.FhirError(500, "internal error; it has been logged", "exception").outcome(), 500)


def is_fhir_path(path: str) -> bool:
    return path == "/fhir" or path.startswith("/fhir/")


def fhir_router(max_body_bytes: int) -> Router:
    # Base64 in a Parameters body is a third larger than the image it carries.
    return Router(
        path="/fhir",
        route_handlers=[metadata, batch_or_transaction, analyze_operation, search_type, create, conditional_update,
                        history_type, read, update, delete_instance, history_instance, vread],
        exception_handlers={Exception: fhir_error_response},
        request_max_body_size=int(max_body_bytes * 1.4) + 65536,
        include_in_schema=True,
    )
