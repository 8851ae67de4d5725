"""Content negotiation and the shape of every /fhir answer: media types, JSON bodies, headers."""

from __future__ import annotations

import json
from datetime import UTC
from email.utils import format_datetime
from typing import Any

from litestar import Request, Response

from ...services.container import Services
from . import errors
from .interactions import Result
from .transactions import version_from_etag

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
# An API answer is data, never a page: nothing in it may run, frame or be cached by a proxy.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
                    "Referrer-Policy": "no-referrer"}


def base_url(request: Request) -> str:
    """The FHIR base for fullUrl and links: the configured public URL, else (no proxy) the request's own."""
    public = services_of(request).settings.public_base_url
    if public:
        return public.rstrip("/") + "/fhir"
    return str(request.base_url).rstrip("/") + "/fhir"


def services_of(request: Request) -> Services:
    """The one Services object the app factory built (settings, stores, models, services)."""
    services: Services = request.app.state.services
    return services


def response_type(request: Request) -> str:
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


def json_body(request: Request, data: bytes) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise errors.FhirError(415, f"Content-Type {ctype or '(none)'!r} is not supported; send "
                                    "application/fhir+json", "not-supported")
    try:
        body = json.loads(data, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        # {"resourceType": "Observation", "resourceType": "Patient"}: parsers disagree on which one
        # counts (Python keeps the last), so what was checked need not be what is stored.
        raise errors.bad_request(f"the body holds the key {exc.key!r} more than once in one JSON object; "
                                 "each property may appear once") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        body = None
    if body is None and data.strip() != b"null" or _too_deep(body):
        raise errors.bad_request(f"the body nests deeper than {MAX_DEPTH} levels") from None
    return body


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """One JSON object, refused when it names a key twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


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
        return response_type(request)
    except errors.FhirError:
        return FHIR_JSON


def resource_headers(request: Request, result: Result) -> dict[str, str]:
    headers: dict[str, str] = {}
    if result.version:
        headers["ETag"] = f'W/"{result.version}"'
    if result.last_modified:
        headers["Last-Modified"] = format_datetime(result.last_modified.astimezone(UTC), usegmt=True)
    if result.location and result.status in (200, 201) and result.resource_type:
        headers["Location" if result.created else "Content-Location"] = f"{base_url(request)}/{result.location}"
    return headers


def if_match(request: Request) -> int | None:
    return version_from_etag(request.headers.get("if-match"))


def written(request: Request, result: Result) -> Response:
    """create / update answer, honouring Prefer: return=minimal | representation | OperationOutcome."""
    prefer = request.headers.get("prefer", "")
    headers = resource_headers(request, result)
    if "return=minimal" in prefer:
        return respond(request, None, result.status, headers)
    if "return=OperationOutcome" in prefer:
        verb = "created" if result.created else "updated"
        return respond(request, errors.outcome("information", "informational", f"{result.location} {verb}"),
                       result.status, headers)
    return respond(request, result.resource, result.status, headers)


def wants_raw(request: Request, content_type: str) -> bool:
    """Whether the client asks for the bytes themselves (an image viewer) rather than FHIR JSON."""
    accept = request.headers.get("accept", "")
    return content_type in accept or "image/*" in accept or request.query_params.get("_format") == "binary"


def raw_response(data: bytes, content_type: str) -> Response:
    return Response(content=data, status_code=200, media_type=content_type,
                    headers=SECURITY_HEADERS)  # Cache-Control: no-store, like every FHIR answer
