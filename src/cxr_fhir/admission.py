"""Admission of request bodies: the outermost ASGI middleware, in front of CSRF and the router.

A request that may carry a body is, before a byte of that body is read:

1. classified by its route, which gives the most it may send (``Admission.limit_for``);
2. authenticated: a valid bearer token under /fhir and /dicomweb, a valid session cookie on the pages (``/login``
   and ``/logout`` excepted). An unauthenticated request still goes on to the app, which answers
   it as it always has (the FHIR guard's 401 and its audit event, the CSRF 403, the login
   redirect), but with an empty body: what the client sends is never read, and the connection is
   closed after the answer;
3. refused with 413 when its Content-Length is over the limit; otherwise its body is counted as it
   arrives and refused with 413 past the limit (nothing more is read), and with 408 when it makes
   no progress for ``body_timeout_s``.

A client that goes away in the middle of its body ends the request with one log line (no
traceback). Every answer, wherever it was made, gets the security headers of its side (the pages'
or the API's), so that errors made outside the handlers (CSRF 403, 413, routing 404/405) carry them
too.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import anyio
from anyio import to_thread
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.engine import Engine

from .api.dicomweb import is_dicomweb, stow_limit
from .api.fhir.errors import FhirError
from .api.fhir.guard import CLIENT_STATE_KEY
from .api.fhir.negotiation import FHIR_JSON, SECURITY_HEADERS
from .records.tables import ApiClient
from .security.clients import authenticate
from .storage.db import reading
from .web.headers import with_security_headers
from .web.sessions import COOKIE, SessionStore

log = logging.getLogger("cxr_fhir.admission")

BODY_TIMEOUT_S = 30.0  # no byte of the body for this long: 408
KIB, MIB = 1024, 1024 * 1024
BUNDLE_LIMIT = 16 * MIB  # POST /fhir (batch or transaction)
FHIR_WRITE_LIMIT = 4 * MIB  # any other /fhir request with a body
LOGIN_LIMIT = 16 * KIB  # /login, /logout: a user name, a password and a CSRF token
FORM_LIMIT = 64 * KIB  # every other page form
UPLOAD_FILES = 10  # as web/studies.py: ten files at the upload limit plus the form around them
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
UPLOAD = re.compile(r"^/patients/[^/]+/studies/?$")
ANALYZE = re.compile(r"^/fhir/ImagingStudy/\$analyze/?$")
GONE_KEY = "cxr_fhir.client_gone"  # in scope["state"]: the access log records 499 for it

_FHIR_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class _Stop(BaseException):
    """Unwinds the app once the middleware has answered (or the client has gone): a BaseException,
    so that no ``except Exception`` on the way turns it into a 500 and a traceback."""


def is_fhir(path: str) -> bool:
    return path == "/fhir" or path.startswith("/fhir/")


def add_security_headers(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if is_fhir(path):
        names = {k.lower() for k, _ in headers}
        return [*headers, *(h for h in _FHIR_HEADERS if h[0] not in names)]
    return with_security_headers(path, headers)


def _client_for(engine: Engine, token: str) -> ApiClient | None:
    with reading(engine) as s:
        return authenticate(s, token)


class Admission:
    def __init__(self, app: ASGIApp, engine: Engine, max_upload_bytes: int,
                 body_timeout_s: float = BODY_TIMEOUT_S, *, dicom_max_instance_bytes: int = 100 * MIB):
        self.app, self.engine, self.body_timeout_s = app, engine, body_timeout_s
        self.stow_limit = stow_limit(dicom_max_instance_bytes)  # POST /dicomweb/studies: STOW-RS
        self.analyze_limit = int(max_upload_bytes * 1.4) + 64 * KIB  # base64 in a Parameters resource
        self.upload_limit = max_upload_bytes * UPLOAD_FILES + MIB

    def limit_for(self, method: str, path: str) -> int:
        if is_dicomweb(path):
            return self.stow_limit
        if is_fhir(path):
            if ANALYZE.match(path):
                return self.analyze_limit
            if path in ("/fhir", "/fhir/") and method == "POST":
                return min(BUNDLE_LIMIT, self.analyze_limit)
            return min(FHIR_WRITE_LIMIT, self.analyze_limit)
        if method == "POST" and UPLOAD.match(path):
            return self.upload_limit
        if path in ("/login", "/logout"):
            return LOGIN_LIMIT
        return FORM_LIMIT

    async def authenticated(self, scope: Scope, path: str) -> bool:
        """A valid bearer token under /fhir and /dicomweb, a valid session on the pages (none needed to
        log in or out)."""
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        try:
            if is_fhir(path) or is_dicomweb(path):
                scheme, _, token = connection.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return False
                client = await to_thread.run_sync(_client_for, self.engine, token.strip())
                if client is None:
                    return False
                scope["state"][CLIENT_STATE_KEY] = client
                return True
            if path in ("/login", "/logout"):
                return True
            user = await to_thread.run_sync(SessionStore(self.engine).user_for, connection.cookies.get(COOKIE))
        except Exception:  # the database is unreachable: the app answers that (503) itself
            log.warning("request not authenticated: the look-up failed", extra={"path": path}, exc_info=False)
            return False
        if user is None:
            return False
        scope["state"]["user"] = user  # web/guards.current_user looks it up no second time
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        exchange = _Exchange(scope, receive, send, self.body_timeout_s)
        if not exchange.has_body:
            await self.app(scope, receive, exchange.send)
            return
        if not await self.authenticated(scope, exchange.path):
            # The app answers as ever (401 and its audit, CSRF 403, the login redirect), from an
            # empty body: nothing the client sends is read.
            exchange.close = True
            await self.app(scope, exchange.nothing, exchange.send)
            return
        exchange.limit = self.limit_for(exchange.method, exchange.path)
        if exchange.declared is not None and exchange.declared > exchange.limit:
            await exchange.refuse(413, exchange.too_large())
            return
        try:
            await self.app(scope, exchange.counted, exchange.send)
        except _Stop:
            return
        except BaseExceptionGroup as group:  # raised inside a task group on the way
            _, rest = group.split(_Stop)
            if rest is not None:
                raise rest from None


class _Exchange:
    """One request with a body on its way through: what was declared, what has arrived, and
    whether the middleware has answered it (then whatever the app still sends is dropped)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, body_timeout_s: float):
        self.scope, self.receive, self.downstream, self.body_timeout_s = scope, receive, send, body_timeout_s
        self.path = str(scope.get("path", ""))
        self.method = str(scope.get("method", "GET"))
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared_raw = headers.get(b"content-length", b"").strip()
        self.declared = int(declared_raw) if declared_raw.isdigit() else None
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.has_body = self.method in BODY_METHODS or chunked or bool(self.declared)
        self.limit = 0
        self.seen = 0
        self.complete = False  # the whole body has arrived
        self.started = False  # a response has begun (by the app or by us)
        self.answered = False  # we answered: whatever the app still sends is dropped
        self.close = False  # the body was not read to its end: the connection cannot be reused
        self.gave_nothing = False

    def too_large(self) -> str:
        return f"the request body is larger than {self.limit} bytes, the most this address accepts"

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
            out = add_security_headers(self.path, list(message.get("headers", [])))
            if self.close:
                out = [h for h in out if h[0].lower() != b"connection"] + [(b"connection", b"close")]
            message["headers"] = out
        await self.downstream(message)

    async def refuse(self, status: int, text: str) -> None:
        if self.started:
            return  # the app has begun to answer: it can only be cut short
        self.close = True
        if is_fhir(self.path):
            code = {413: "too-costly", 408: "timeout"}.get(status, "invalid")
            body = json.dumps(FhirError(status, text, code).outcome()).encode()
            ctype = FHIR_JSON.encode()
        elif is_dicomweb(self.path):  # as the DICOMweb routes answer their own errors
            body = json.dumps({"detail": text, "status_code": status}).encode()
            ctype = b"application/json"
        else:
            body = f'<!doctype html><title>Error {status}</title><p class="error">{html.escape(text)}</p>'.encode()
            ctype = b"text/html; charset=utf-8"
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self.answered = True

    async def nothing(self) -> Any:
        """The receive of an unauthenticated request: an empty body, then the client is gone."""
        if self.gave_nothing:
            return {"type": "http.disconnect"}
        self.gave_nothing = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def counted(self) -> Any:
        """The receive of an admitted request: each part counted against the limit and the clock."""
        if self.complete:
            return await self.receive()
        message: Any = None
        with anyio.move_on_after(self.body_timeout_s):
            message = await self.receive()
        where = {"path": self.path, "method": self.method, "bytes": self.seen}
        if message is None:
            log.info("request body timed out", extra={**where, "timeout_s": self.body_timeout_s})
            await self.refuse(408, f"no part of the request body arrived for {self.body_timeout_s:g} s")
            raise _Stop
        if message["type"] == "http.disconnect":
            log.info("client disconnected before the end of its request body", extra=where)
            self.scope["state"][GONE_KEY] = True
            raise _Stop
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit:
            log.info("request body over the limit", extra={**where, "limit": self.limit})
            await self.refuse(413, self.too_large())
            raise _Stop
        self.complete = not message.get("more_body", False)
        return message


def admission(engine: Engine, max_upload_bytes: int, body_timeout_s: float = BODY_TIMEOUT_S
              ) -> Callable[[ASGIApp], ASGIApp]:
    def wrap(app: ASGIApp) -> ASGIApp:
        return Admission(app, engine, max_upload_bytes, body_timeout_s)
    return wrap
