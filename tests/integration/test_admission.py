"""The admission of request bodies (cxr_fhir.admission): authentication and size limits per route
before any body is read, 408 on a stalled body, and security headers and true statuses on answers
made outside the handlers. Driven at the ASGI level, so the test sees exactly how many body bytes
the app asked for."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.records.tables import AuditEvent, User
from cxr_fhir.security.clients import create_client
from cxr_fhir.security.users import create_user
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.web.sessions import SessionStore

MIB = 1024 * 1024
CHUNK = b"x" * 65536
STALL, GONE = object(), object()  # in a body: wait past the timeout / the client goes away


class Sent:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.consumed = 0  # body bytes the app took from the client


def _messages(chunks: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    prev: Any = None
    for c in chunks:
        if prev is not None:
            yield prev, True
        prev = c
    yield (b"" if prev is None else prev), False


async def _call(app: Litestar, method: str, path: str, headers: dict[str, str], chunks: Iterable[Any] = ()) -> Sent:
    sent = Sent()
    it = _messages(chunks)

    async def receive() -> Any:
        nxt = next(it, None)
        if nxt is None:
            await anyio.sleep(0.01)
            return {"type": "http.disconnect"}
        chunk, more = nxt
        if chunk is STALL:
            await anyio.sleep(30)
            chunk = b""
        if chunk is GONE:
            return {"type": "http.disconnect"}
        sent.consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            sent.status = message["status"]
            sent.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            sent.body += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    with anyio.fail_after(20):
        await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


def call(app: Litestar, method: str, path: str, headers: dict[str, str], chunks: Iterable[Any] = ()) -> Sent:
    return anyio.run(_call, app, method, path, headers, chunks)


def body_of(size: int) -> Iterator[bytes]:
    """``size`` bytes in 64 KiB chunks, made as they are asked for."""
    while size > 0:
        yield CHUNK[:size]
        size -= len(CHUNK)


@pytest.fixture
def world(settings):
    """An app on a migrated SQLite database with a FHIR client token and a doctor's session cookie."""
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        token = create_client(s, "admission", ["system/*.*"], actor="test")[1]
        create_user(s, "dr.house", "correct-horse-battery", "doctor", actor="test")
    with writing(engine) as s:
        user = s.exec(select(User).where(User.username == "dr.house")).one()
        cookie = SessionStore(engine).create(s, user, "127.0.0.1")
    yield {"settings": settings, "engine": engine, "token": token, "cookie": f"cxr_session={cookie}"}
    engine.dispose()


def _app(world, **kw) -> Litestar:
    return create_app(world["settings"], **kw)


FORM = "application/x-www-form-urlencoded"


def _routes(world) -> list[tuple[str, str, dict[str, str], int]]:
    """(method, path, headers, limit) for each class of route, authenticated."""
    up = world["settings"].max_upload_bytes
    fhir = {"authorization": f"Bearer {world['token']}", "content-type": "application/fhir+json"}
    page = {"cookie": world["cookie"], "content-type": FORM}
    return [("POST", "/fhir/ImagingStudy/$analyze", fhir, int(up * 1.4) + 65536),
            ("POST", "/fhir", fhir, min(16 * MIB, int(up * 1.4) + 65536)),
            ("POST", "/fhir/Patient", fhir, min(4 * MIB, int(up * 1.4) + 65536)),
            ("PUT", "/fhir/Patient/p1", fhir, min(4 * MIB, int(up * 1.4) + 65536)),
            ("POST", "/patients/p1/studies", {**page, "content-type": "multipart/form-data; boundary=xyz"},
             up * 10 + MIB),
            ("POST", "/login", page, 16 * 1024),
            ("POST", "/patients/new", page, 64 * 1024)]


def test_declared_length_over_the_route_limit_is_413_before_any_byte_is_read(world):
    app = _app(world)  # default max_upload_bytes (50 MB): every route class has a limit of its own
    limits = {path: limit for _, path, _, limit in _routes(world)}
    assert len(set(limits.values())) == len(limits) - 1  # (two /fhir writes share theirs)
    for method, path, headers, limit in _routes(world):
        r = call(app, method, path, {**headers, "content-length": str(limit + 1)}, body_of(limit + 1))
        assert r.status == 413 and r.consumed == 0, (path, r.status, r.consumed)
        assert r.headers.get("connection") == "close"
        if path.startswith("/fhir"):
            assert b"OperationOutcome" in r.body and b"too-costly" in r.body
            assert r.headers["x-content-type-options"] == "nosniff"
        else:
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_streamed_body_over_the_route_limit_is_cut_off_at_the_limit(world):
    world["settings"].max_upload_bytes = 100_000  # keeps the biggest limits (uploads, $analyze) small here
    app = _app(world)
    for method, path, headers, limit in _routes(world):
        r = call(app, method, path, {**headers, "transfer-encoding": "chunked"}, body_of(limit * 3))
        assert r.status == 413, (path, r.status, r.body[:300])
        assert r.consumed <= limit + len(CHUNK), (path, r.consumed)


def test_fhir_without_a_valid_token_is_401_before_the_body_is_read(world):
    app = _app(world)
    for auth in ({}, {"authorization": "Bearer cxr_not-a-token"}, {"authorization": "Basic eDp5"}):
        headers = {**auth, "content-type": "application/fhir+json", "content-length": str(60 * MIB)}
        r = call(app, "POST", "/fhir/Patient", headers, body_of(60 * MIB))
        assert r.status == 401 and r.consumed == 0, (auth, r.status, r.consumed)
        assert r.headers["www-authenticate"].startswith("Bearer") and b"OperationOutcome" in r.body
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers.get("connection") == "close"
    # The failed attempts are still audited, as the guard does.
    with Session(world["engine"]) as s:
        failures = s.exec(select(AuditEvent).where(AuditEvent.outcome == "4")).all()
    assert len(failures) >= 3


def test_page_post_without_a_session_is_refused_before_the_body_is_read(world):
    app = _app(world)
    size = 200 * MIB
    r = call(app, "POST", "/patients/anything/studies", {"content-type": FORM, "content-length": str(size)},
             body_of(size))
    assert r.status == 403 and r.consumed == 0, (r.status, r.consumed)
    chunked = call(app, "POST", "/patients/new", {"content-type": FORM, "transfer-encoding": "chunked",
                                                  "cookie": "cxr_session=stolen-or-expired"}, body_of(size))
    assert chunked.status == 403 and chunked.consumed == 0
    assert "content-security-policy" in r.headers and chunked.headers.get("connection") == "close"


def test_a_stalled_body_is_408(world, caplog):
    app = _app(world, body_timeout_s=0.3)
    fhir = {"authorization": f"Bearer {world['token']}", "content-type": "application/fhir+json",
            "content-length": "100000"}
    page = {"cookie": world["cookie"], "content-type": FORM, "content-length": "5000"}
    for path, headers in (("/fhir/Patient", fhir), ("/patients/new", page)):
        start = time.monotonic()
        r = call(app, "POST", path, headers, [b"x" * 1000, STALL, b"x" * 1000])
        assert r.status == 408 and time.monotonic() - start < 5, (path, r.status)
        assert r.headers.get("connection") == "close"


def test_client_gone_mid_body_is_one_log_line_without_traceback(world, caplog):
    app = _app(world)
    headers = {"authorization": f"Bearer {world['token']}", "content-type": "application/fhir+json",
               "content-length": "100000"}
    with caplog.at_level(logging.INFO):
        r = call(app, "POST", "/fhir/Patient", headers, [b"x" * 1000, GONE])
        page = call(app, "POST", "/patients/new", {"cookie": world["cookie"], "content-type": FORM,
                                                   "content-length": "5000"}, [b"a=1&", GONE])
    assert r.status is None and page.status is None
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]
    gone = [rec for rec in caplog.records if "disconnected" in rec.getMessage()]
    assert len(gone) == 2
    assert [rec.status for rec in caplog.records if rec.name == "cxr_fhir.access"] == [499, 499]


def test_security_headers_and_true_status_on_answers_made_outside_the_handlers(world, caplog):
    with caplog.at_level(logging.INFO, logger="cxr_fhir.access"), TestClient(app=_app(world)) as client:
        csrf = client.post("/login", data={"username": "dr.house", "password": "x"})  # no CSRF token
        assert csrf.status_code == 403
        routing = client.get("/no-such-page")
        assert routing.status_code == 404
        method = client.post("/health")
        assert method.status_code == 405
        too_big = client.post("/login", content=b"a" * 20000, headers={"content-type": FORM})
        assert too_big.status_code == 413
        fhir_404 = client.get("/fhir/NoSuchType/x/y/z/w")
        assert fhir_404.status_code in (400, 404)
    for r in (csrf, routing, method, too_big):
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.status_code
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert fhir_404.headers["x-content-type-options"] == "nosniff"
    assert fhir_404.headers["content-security-policy"].startswith("default-src 'none'")
    logged = [(rec.path, rec.status) for rec in caplog.records if rec.name == "cxr_fhir.access"]
    assert ("/login", 403) in logged and ("/no-such-page", 404) in logged and ("/health", 405) in logged
    assert ("/login", 413) in logged
    assert not [status for _, status in logged if status == 500]
