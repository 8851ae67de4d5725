"""Error pages (403, 404, 500 ...) and the login redirect, for the web pages only.

The FHIR API under /fhir answers errors its own way: for its paths these handlers fall back to
plain JSON, and its own router-level handlers take precedence anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.response import Redirect

from ..domain.errors import (
    BusinessRule,
    CxrError,
    Duplicate,
    Gone,
    Invalid,
    InvalidRequest,
    NotFound,
    NotSupported,
    Refused,
    TooCostly,
    Unavailable,
    VersionConflict,
)
from .common import page

log = logging.getLogger("cxr_fhir.web")

TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed here", 409: "Changed meanwhile",
          413: "File too large", 422: "Cannot be done", 500: "Something went wrong", 503: "Try again shortly"}
# The pages' one table from the domain's error taxonomy to a status (looked up along the MRO);
# the message is the error's own, written for people. Handlers that can show an error next to its
# form field catch it first; this answers whatever reaches the app.
DOMAIN_STATUS: dict[type[CxrError], int] = {
    InvalidRequest: 400, TooCostly: 400, NotFound: 404, Gone: 404, NotSupported: 405, VersionConflict: 409,
    Duplicate: 409, Invalid: 422, BusinessRule: 409, Refused: 422, Unavailable: 503,
}
API_PREFIXES = ("/fhir", "/health", "/ready")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIXES)


def _error_page(request: Request, status: int, message: str) -> Response:
    if _is_api(request):
        return Response({"status_code": status, "detail": message}, status_code=status, media_type=MediaType.JSON)
    template = "partials/error_inline.html" if request.headers.get("hx-request") == "true" else "error.html"
    return page(request, template, status_code=status, status=status,
                title=TITLES.get(status, "Error"), message=message)


def not_authorized(request: Request, exc: NotAuthorizedException) -> Response:
    if _is_api(request):
        return _error_page(request, 401, exc.detail)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = "/login" if target in ("/", "/login") else f"/login?next={quote(target, safe='')}"
    if request.headers.get("hx-request") == "true":
        # htmx would swap a redirect's body into the fragment; ask it to load the page instead.
        return Response("", status_code=401, headers={"HX-Redirect": login})
    return Redirect(login, status_code=303)


def http_error(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status == 403:
        message = ("Your form has expired or was sent from another page. Reload the page and try again."
                   if "CSRF" in str(exc.detail) else str(exc.detail or "You may not open this page."))
    elif status == 404:
        message = "There is no such page, patient or study (it may have been deleted)."
    else:
        message = str(exc.detail or TITLES.get(status, "Error"))
    return _error_page(request, status, message)


def domain_error(request: Request, exc: CxrError) -> Response:
    status = next(DOMAIN_STATUS[k] for k in type(exc).__mro__ if k in DOMAIN_STATUS)
    if status == 404:
        return _error_page(request, 404, "There is no such patient or study (it may have been deleted).")
    response = _error_page(request, status, exc.message)
    if isinstance(exc, Unavailable):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return _error_page(request, 500, "The server could not finish this request. It has been logged; "
                                     "please try again or call the on-call engineer.")


def exception_handlers(api_errors: Callable[[Request, HTTPException], Response] | None) -> dict[Any, Any]:
    """The pages' handlers; HTTP errors on API paths go to ``api_errors`` (the FHIR OperationOutcome)."""

    def routed(handler: Callable[[Request, Any], Response]) -> Callable[[Request, Any], Response]:
        def dispatch(request: Request, exc: Any) -> Response:
            if api_errors is not None and _is_api(request) and isinstance(exc, HTTPException):
                return api_errors(request, exc)
            return handler(request, exc)
        return dispatch

    return {NotAuthorizedException: routed(not_authorized), HTTPException: routed(http_error),
            CxrError: domain_error, 500: internal_error}
