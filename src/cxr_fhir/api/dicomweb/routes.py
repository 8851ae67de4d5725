"""DICOMweb STOW-RS (PS3.18 §10.5): POST /dicomweb/studies[/{StudyInstanceUID}].

The same bearer tokens as /fhir: ``system/ImagingStudy.write`` (or a wildcard covering it) opens
it; no token or a revoked one is 401, another scope 403. The app's admission middleware has
already authenticated the token and bounded the body (``stow_limit``) before a byte was read."""

from __future__ import annotations

import json
import logging

from anyio import to_thread
from litestar import Request, Response, Router, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from sqlalchemy.exc import OperationalError

from ...records.tables import ApiClient
from ...security.clients import allows
from ..fhir.errors import FhirError
from ..fhir.guard import client_of
from ..fhir.negotiation import services_of
from . import audit, response
from .multipart import MalformedMultipart, MediaTypeError, boundary_of, split
from .stow import store_all

log = logging.getLogger("cxr_fhir.dicomweb")
PREFIX = "/dicomweb"
MIB = 1024 * 1024
STOW_INSTANCES = 10  # instances at the largest size one request may carry (as the upload form's ten files)
MODELS_RETRY_AFTER_S = 30
ACCEPTED = {"application/dicom+json", "application/json", "application/*", "*/*"}


def is_dicomweb(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def stow_limit(max_instance_bytes: int) -> int:
    """The most a STOW-RS body may hold: ten instances at the per-instance limit, and their framing."""
    return max_instance_bytes * STOW_INSTANCES + MIB


class DicomwebError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}

    def response(self) -> Response:
        return Response({"detail": self.detail, "status_code": self.status}, status_code=self.status,
                        headers=self.headers, media_type="application/json")


def _client(request: Request) -> ApiClient:
    try:
        return client_of(request)
    except FhirError as exc:  # 401 with its WWW-Authenticate challenge
        raise DicomwebError(exc.status, exc.diagnostics, exc.headers) from None


def _require_write(client: ApiClient) -> None:
    if not allows(client.scopes, "ImagingStudy", "write"):
        raise DicomwebError(403, "the token's scopes do not allow STOW-RS (needs system/ImagingStudy.write)")


def _check_accept(request: Request) -> None:
    """The response is application/dicom+json; a client that takes only XML is answered 406."""
    header = request.headers.get("accept", "")
    if not header.strip():
        return
    for media_range in header.split(","):
        media, *params = [p.strip().lower() for p in media_range.split(";")]
        quality = next((p.partition("=")[2] for p in params if p.startswith("q=")), "1")
        if media in ACCEPTED and quality.strip() not in ("0", "0.0", "0.00", "0.000"):
            return
    raise DicomwebError(406, f"Accept {header!r}: this server answers STOW-RS in application/dicom+json only")


def _base(request: Request) -> str:
    public = services_of(request).settings.public_base_url
    return (public.rstrip("/") if public else str(request.base_url).rstrip("/")) + PREFIX


def _store(request: Request, data: bytes, path_study: str | None) -> Response:
    services = services_of(request)
    client: ApiClient | None = None
    try:
        client = _client(request)
        _require_write(client)
        _check_accept(request)
        try:
            parts = split(data, boundary_of(request.headers.get("content-type", "")))
        except MediaTypeError as exc:
            raise DicomwebError(415, str(exc)) from None
        except MalformedMultipart as exc:
            raise DicomwebError(400, str(exc)) from None
        if services.models is None:
            raise DicomwebError(503, services.model_error or "the models are not loaded",
                                {"Retry-After": str(MODELS_RETRY_AFTER_S)})
    except DicomwebError as exc:
        audit.record_request(services.engine, request, client, exc.status, exc.detail)
        return exc.response()
    admitted = client  # not None past the try: named so the audit callback sees it so (mypy)
    actor = f"client:{admitted.name}"
    results = store_all(services, parts, actor, path_study,
                        lambda item: audit.record_instance(services.engine, request, admitted, item))
    status = response.status(results)
    waits = [r.retry_after_s for r in results if r.retry_after_s is not None]
    headers = {"Retry-After": str(max(waits))} if waits else {}
    stored = sum(r.failure is None for r in results)
    audit.record_request(services.engine, request, client, status,
                         f"{stored} stored, {len(results) - stored} failed")
    payload = json.dumps(response.body(results, _base(request), path_study)).encode()
    return Response(payload, status_code=status, headers=headers, media_type=response.DICOM_JSON)


def _refuse_early(request: Request) -> Response | None:
    """The token's scopes, checked before a byte of the body is read: a token that may not store
    must not make the server buffer up to the request limit first (admission checked the token)."""
    client: ApiClient | None = None
    try:
        client = _client(request)
        _require_write(client)
        return None
    except DicomwebError as exc:
        audit.record_request(services_of(request).engine, request, client, exc.status, exc.detail)
        return exc.response()


async def _receive(request: Request, path_study: str | None) -> Response:
    refused = await to_thread.run_sync(lambda: _refuse_early(request))
    if refused is not None:
        return refused
    data = await request.body()
    answer: Response = await to_thread.run_sync(lambda: _store(request, data, path_study))
    return answer


@post("/studies", exclude_from_csrf=True, include_in_schema=False)
async def store_instances(request: Request) -> Response:
    return await _receive(request, None)


@post("/studies/{study_uid:str}", exclude_from_csrf=True, include_in_schema=False)
async def store_study_instances(request: Request, study_uid: FromPath[str]) -> Response:
    return await _receive(request, study_uid)


def _errors(request: Request, exc: Exception) -> Response:
    """Whatever a handler did not answer itself, in the same JSON shape as its own errors."""
    if isinstance(exc, HTTPException):
        return DicomwebError(exc.status_code, str(exc.detail), exc.headers).response()
    if isinstance(exc, OperationalError):
        return DicomwebError(503, "the database is unavailable; try again shortly", {"Retry-After": "5"}).response()
    log.exception("unhandled error", extra={"path": request.url.path})
    return DicomwebError(500, "internal error; it has been logged").response()


def dicomweb_router(max_instance_bytes: int) -> Router:
    return Router(path=PREFIX, route_handlers=[store_instances, store_study_instances],
                  exception_handlers={Exception: _errors}, request_max_body_size=stow_limit(max_instance_bytes))
