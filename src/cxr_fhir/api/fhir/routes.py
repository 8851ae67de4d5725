"""The FHIR R4 REST API under /fhir: one handler per interaction, each passing the one guard.

The handlers are thin: the guard authenticates the bearer token, checks its scopes and audits;
the handler parses the request and hands over to interactions / search / transactions / analyze
on one database session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from urllib.parse import urlencode

from anyio import to_thread
from litestar import Request, Response, Router, delete, get, post, put
from litestar.exceptions import HTTPException
from sqlalchemy.exc import OperationalError

from ...domain.errors import CxrError
from ...records.tables import ApiClient
from ...storage.db import reading, writing
from ...storage.fhir import search
from ...storage.fhir.delivery import with_delivery_status
from . import analyze, errors, interactions, openapi, transactions
from .capability import capability_statement
from .guard import actor_of, audit_entries, can_read, guarded, require, require_criteria
from .history import history_bundle
from .negotiation import (
    JSON_TYPES,
    base_url,
    if_match,
    json_body,
    raw_response,
    resource_headers,
    respond,
    response_type,
    services_of,
    wants_raw,
    written,
)
from .providers import PROVIDERS

log = logging.getLogger("cxr_fhir.fhir")
STARTED = datetime.now(UTC).isoformat(timespec="seconds")


# -- handlers -------------------------------------------------------------------------------------

async def with_body(request: Request, work: Callable[..., Response], *args: str) -> Response:
    """The one body wrapper: read the request body on the event loop, then run the (blocking)
    interaction in a worker thread with the body as its last argument."""
    data = await request.body()
    response: Response = await to_thread.run_sync(lambda: work(request, *args, data))
    return response


@get("/metadata", sync_to_thread=False)
def metadata(request: Request) -> Response:
    response_type(request)
    return respond(request, capability_statement(base_url(request), package_version("cxr-fhir"), STARTED))


@post("/", operation_class=openapi.BUNDLE_BODY)
async def batch_or_transaction(request: Request) -> Response:
    return await with_body(request, _batch_or_transaction)


def _batch_or_transaction(request: Request, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        bundle = json_body(request, data)
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
            require_criteria(client, rtype, urlencode(pairs))
            require_criteria(client, rtype, str(req.get("ifNoneExist") or ""))
        response, done = transactions.process(services_of(request).engine, services_of(request), bundle,
                                              actor_of(client), base_url(request), can_read=can_read(client))
        audit_entries(request, client, done)
        return respond(request, response)

    return guarded(request, "transaction", None, None, None, work, audit_resource="Bundle")


@get("/{resource_type:str}", sync_to_thread=True)
def search_type(request: Request, resource_type: openapi.ResourceType) -> Response:
    pairs = list(request.query_params.multi_items())

    def work(client: ApiClient) -> Response:
        with reading(services_of(request).engine) as s:
            interactions.provider(resource_type, None)
            for other in search.types_read(resource_type, pairs):
                require(client, other, "read")
            strict = "handling=strict" in request.headers.get("prefer", "")
            return respond(request, search.bundle(s, resource_type, pairs, base_url(request), strict,
                                                  can_read=can_read(client)))

    return guarded(request, "search-type", resource_type, None, "read", work)


@post("/{resource_type:str}", operation_class=openapi.RESOURCE_BODY)
async def create(request: Request, resource_type: openapi.ResourceType) -> Response:
    return await with_body(request, _create, resource_type)


def _create(request: Request, resource_type: str, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        body = json_body(request, data)
        require_criteria(client, resource_type, request.headers.get("if-none-exist") or "")
        with writing(services_of(request).engine) as s:
            result = interactions.create(s, services_of(request), resource_type, body, actor_of(client),
                                         request.headers.get("if-none-exist"))
        return written(request, result)

    return guarded(request, "create", resource_type, None, "write", work)


@put("/{resource_type:str}", operation_class=openapi.RESOURCE_BODY)
async def conditional_update(request: Request, resource_type: openapi.ResourceType) -> Response:
    return await with_body(request, _conditional_update, resource_type)


def _conditional_update(request: Request, resource_type: str, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        body = json_body(request, data)
        require_criteria(client, resource_type, request.url.query)
        with writing(services_of(request).engine) as s:
            result = interactions.conditional_update(s, services_of(request), resource_type,
                                                     list(request.query_params.multi_items()), body, actor_of(client))
        return written(request, result)

    return guarded(request, "update", resource_type, None, "write", work)


@get("/{resource_type:str}/_history", sync_to_thread=True)
def history_type(request: Request, resource_type: openapi.ResourceType) -> Response:
    return guarded(request, "history-type", resource_type, None, "read",
                    lambda client: history_bundle(request, resource_type, None))


@get("/{resource_type:str}/{rid:str}", sync_to_thread=True)
def read(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    def work(client: ApiClient) -> Response:
        with reading(services_of(request).engine) as s:
            result = interactions.read(s, services_of(request), resource_type, rid)
            assert result.resource is not None  # a read returns the resource or raises NotFound/Gone
            body = with_delivery_status(s, result.resource)
        if result.raw is not None and wants_raw(request, result.content_type or ""):
            return raw_response(result.raw, result.content_type or "application/octet-stream")
        return respond(request, body, 200, resource_headers(request, result))

    provider = PROVIDERS.get(resource_type)
    return guarded(request, "read", resource_type, rid, None if provider and provider.public else "read", work)


@put("/{resource_type:str}/{rid:str}", operation_class=openapi.RESOURCE_BODY)
async def update(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    return await with_body(request, _update, resource_type, rid)


def _update(request: Request, resource_type: str, rid: str, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        body = json_body(request, data)
        with writing(services_of(request).engine) as s:
            result = interactions.update(s, services_of(request), resource_type, rid, body, actor_of(client),
                                         if_match(request))
        return written(request, result)

    return guarded(request, "update", resource_type, rid, "write", work)


@delete("/{resource_type:str}/{rid:str}", sync_to_thread=True, status_code=200)
def delete_instance(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    def work(client: ApiClient) -> Response:
        with writing(services_of(request).engine) as s:
            result = interactions.delete(s, services_of(request), resource_type, rid, actor_of(client),
                                         if_match(request))
        headers = {"ETag": f'W/"{result.version}"'} if result.version else {}
        return respond(request, result.resource, 200, headers)

    return guarded(request, "delete", resource_type, rid, "write", work)


@get("/{resource_type:str}/{rid:str}/_history", sync_to_thread=True)
def history_instance(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid) -> Response:
    return guarded(request, "history-instance", resource_type, rid, "read",
                    lambda client: history_bundle(request, resource_type, rid))


@get("/{resource_type:str}/{rid:str}/_history/{vid:str}", sync_to_thread=True)
def vread(request: Request, resource_type: openapi.ResourceType, rid: openapi.Rid, vid: openapi.Vid) -> Response:
    def work(client: ApiClient) -> Response:
        with reading(services_of(request).engine) as s:
            result = interactions.vread(s, resource_type, rid, vid)
        return respond(request, result.resource, 200, resource_headers(request, result))

    return guarded(request, "vread", resource_type, rid, "read", work)


@post("/ImagingStudy/$analyze", operation_class=openapi.ANALYZE_BODY)
async def analyze_operation(request: Request) -> Response:
    return await with_body(request, _analyze_operation)


def _analyze_operation(request: Request, data: bytes) -> Response:
    def work(client: ApiClient) -> Response:
        for rtype in ("ImagingStudy", "DiagnosticReport", "Observation"):
            require(client, rtype, "write")
        services = services_of(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in analyze.IMAGE_TYPES:
            image, subject = data, request.query_params.get("subject")
        elif ctype in JSON_TYPES:
            image, subject = analyze.from_parameters(json_body(request, data))
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
        bundle, stages_ms = analyze.run(services, image, subject, actor_of(client).name, base_url(request))
        return respond(request, bundle, 200, {"Server-Timing": analyze.server_timing(
            stages_ms, (time.perf_counter() - start) * 1000)})

    return guarded(request, "operation", "ImagingStudy", None, None, work)



# -- errors as OperationOutcome -------------------------------------------------------------------

def fhir_error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, CxrError):
        exc = errors.from_domain(exc)
    if isinstance(exc, errors.FhirError):
        return respond(request, exc.outcome(), exc.status, exc.headers)
    if isinstance(exc, HTTPException):
        code = {404: "not-found", 405: "not-supported", 413: "too-costly", 401: "login", 403: "forbidden"}
        status = exc.status_code
        return respond(request, errors.FhirError(status, str(exc.detail), code.get(status, "invalid")).outcome(),
                       status)
    if isinstance(exc, OperationalError):
        # The driver's message only ("database is locked", "connection refused"), never the statement.
        log.warning("database error answered 503", extra={
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

