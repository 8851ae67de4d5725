"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from anyio import to_thread
from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.response import Response
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import text

from .admission import BODY_TIMEOUT_S, GONE_KEY, Admission
from .api.dicomweb import dicomweb_router
from .api.fhir.routes import fhir_error_response, fhir_router, is_fhir_path
from .domain.vocabulary import Destination
from .services.analysis import AnalysisService
from .services.container import Services
from .services.queue import InferenceQueue
from .settings import Settings
from .storage import migrate
from .storage.db import make_engine
from .storage.image_store import ImageStore

log = logging.getLogger("cxr_fhir.app")


@get("/health", sync_to_thread=False, include_in_schema=False)
def health() -> dict[str, str]:
    """The process is alive (no dependencies checked)."""
    return {"status": "ok"}


@get("/ready", sync_to_thread=True, include_in_schema=False)
def ready(state: State) -> Response[dict[str, Any]]:
    """Ready to serve: database reachable, schema current, models loaded."""
    services: Services = state.services
    checks: dict[str, Any] = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = ("ok" if migrate.is_current(services.engine, services.settings.migrations_dir)
                                else "pending: run 'cxr-fhir db upgrade'")
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    if not services.settings.load_models:
        checks["models"] = "disabled by CXR_LOAD_MODELS=false"
    elif services.models is not None:
        checks["models"] = "ok"
    else:
        checks["models"] = services.model_error or "not loaded"
    checks["ehr_push"] = (f"enabled ({services.settings.ehr_base_url})" if services.settings.ehr_push_enabled
                          else "disabled: CXR_EHR_BASE_URL is not set")
    if services.settings.ehr_push_enabled and checks["migrations"] == "ok":
        # Information, not a readiness condition: a backlog means the EHR is slow, not that we are.
        checks["ehr_outbox"] = services.outbox.backlog(Destination.EHR)
    if services.settings.destinations and checks["migrations"] == "ok":
        checks["outbox"] = {d: services.outbox.backlog(Destination(d)) for d in services.settings.destinations}
    ok = (checks["database"] == "ok" and checks["migrations"] == "ok"
          and (checks["models"] == "ok" or not services.settings.load_models))
    return Response({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


def load_models(services: Services) -> None:
    """Load and warm the models once; on failure the service stays up but never becomes ready."""
    from .inference.pipeline import Pipeline
    from .inference.registry import ModelRegistryError

    settings = services.settings
    try:
        services.models = Pipeline(settings.weights_dir, settings.runtime_dir, settings.inference_threads)
        log.info("models loaded", extra={"model": services.models.model_info})
    except (ModelRegistryError, KeyError, ValueError) as exc:
        services.model_error = f"models not loaded: {exc}"
        log.error("models not loaded", extra={"reason": str(exc)})


HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def _strict_transport(app: ASGIApp) -> ASGIApp:
    """Behind TLS (an https public URL, or CXR_SECURE_COOKIES): every answer, pages, API and errors
    alike, tells the browser to use https only (HSTS)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), HSTS]
            await send(message)

        await app(scope, receive, send_wrapper)

    return middleware


def _access_log(app: ASGIApp) -> ASGIApp:
    """Log method, path, status and duration; never the query string (names and MRNs live there).
    It wraps the whole app (create_app), so the status is the one sent, wherever the answer was made;
    499 when the client went away before its request body was complete."""
    access = logging.getLogger("cxr_fhir.access")

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, int] = {}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            access.info("request", extra={"method": scope.get("method"), "path": scope.get("path"),
                                          "status": status.get("code", 499 if scope.get("state", {}).get(
                                              GONE_KEY) else 500),
                                          "ms": round((time.perf_counter() - start) * 1000, 1)})

    return middleware


async def _sweep_interrupted(services: Services) -> None:
    """At start and every minute: studies a dead process left queued or analysing become failed."""
    timeout = timedelta(seconds=services.settings.analysis_timeout_s)
    while True:
        try:
            await to_thread.run_sync(AnalysisService.fail_interrupted, services.engine, timeout)
        except Exception:  # the database may be down for a while: try again next round
            log.exception("sweep of interrupted analyses failed")
        await asyncio.sleep(60)


def _app_errors(request: Request, exc: HTTPException) -> Response:
    """Errors raised before a route is found (unknown path, wrong method) under /fhir are
    OperationOutcomes too."""
    if is_fhir_path(request.url.path):
        return fhir_error_response(request, exc)
    return Response({"detail": exc.detail, "status_code": exc.status_code}, status_code=exc.status_code,
                    headers=exc.headers)


def create_app(settings: Settings, *, body_timeout_s: float = BODY_TIMEOUT_S) -> Litestar:
    """``body_timeout_s``: how long a request body may make no progress before it is answered 408."""
    services = Services(settings=settings, engine=make_engine(settings.effective_database_url),
                        images=ImageStore(settings.effective_image_store_dir),
                        queue=InferenceQueue(settings.max_queued_analyses))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        log.info("startup", extra={"database": services.engine.dialect.name,
                                   "ehr_push": settings.ehr_push_enabled})
        if settings.load_models:
            load_models(services)
        sweeper = asyncio.create_task(_sweep_interrupted(services))
        worker = None
        if settings.destinations:  # one outbox worker for the EHR, the PACS and the RIS, as configured
            from .outbound.senders import build_senders
            from .outbound.worker import start_in_thread
            worker = start_in_thread(services.engine, services.images, settings, build_senders(settings))
        scp = None
        try:
            if settings.dicom_listen:  # the DICOM Storage SCP beside the web (models missing: it answers 0xA700)
                from .dimse import StorageSCP
                scp = StorageSCP(services).start()
            yield
        finally:  # also when the listener cannot start (port taken): the worker must not outlive the app
            if scp is not None:
                scp.stop()
            sweeper.cancel()
            if worker is not None:
                thread, stop, outbox_worker = worker
                stop.set()
                thread.join(timeout=max(settings.ehr_timeout_s, settings.pacs_timeout_s, settings.ris_timeout_s) + 5)
                outbox_worker.close()
            services.engine.dispose()

    from .web import web_config  # the doctor's pages (templates, CSRF and error pages scoped to them)

    web = web_config(settings, api_errors=_app_errors)
    app = Litestar(
        route_handlers=[health, ready, fhir_router(settings.max_upload_bytes),
                        dicomweb_router(settings.dicom_max_instance_bytes), *web.route_handlers],
        template_config=web.template_config, csrf_config=web.csrf_config,
        exception_handlers=web.exception_handlers,
        state=State({"services": services}),
        # The one Services object, injected into every handler that names it (as litestar-fullstack does).
        dependencies={"services": Provide(lambda: services, sync_to_thread=False)},
        lifespan=[lifespan],
        middleware=web.middleware,
        logging_config=None,  # the process entry point (cli.py) configures JSON logging
    )
    # Outside the router and its exception handlers (so before CSRF, routing and any body read):
    # the admission of request bodies (authentication and size limits per route), then the access
    # log, which thus records the status actually sent.
    app.asgi_handler = _access_log(Admission(app.asgi_handler, services.engine, settings.max_upload_bytes,
                                             body_timeout_s,
                                             dicom_max_instance_bytes=settings.dicom_max_instance_bytes))
    if settings.cookies_secure:
        app.asgi_handler = _strict_transport(app.asgi_handler)
    return app
