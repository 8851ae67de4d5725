"""Security headers on every web response (not on the FHIR API, which sets its own).

``with_security_headers`` is also used by the app's outermost middleware (cxr_fhir.admission), so
that answers made outside the handlers (a CSRF 403, a 413, a routing 404) carry them too."""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

# No inline scripts or styles, no event-handler attributes: all code is in /static.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
NO_STORE = (b"cache-control", b"no-store")  # pages and images of patients stay out of shared caches


def with_security_headers(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus those of HEADERS (and no-store outside /static/) that it does not set itself."""
    names = {k.lower() for k, _ in headers}
    headers = [*headers, *(h for h in HEADERS if h[0] not in names)]
    if not path.startswith("/static/") and b"cache-control" not in names:
        headers.append(NO_STORE)
    return headers


def security_headers(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == ScopeType.HTTP else ""
        if scope["type"] != ScopeType.HTTP or path.startswith("/fhir"):
            await app(scope, receive, send)
            return

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(path, list(message.get("headers", [])))
            await send(message)

        await app(scope, receive, send_wrapper)

    return middleware
