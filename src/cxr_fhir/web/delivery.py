"""The EHR delivery of a report on the result page: its status (polled while pending) and Retry."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath
from litestar.response import Redirect, Template

from ..domain.errors import NotFound
from ..records.tables import OutboxDelivery, Report
from ..records.types import utcnow
from ..services.outbox import RetryRefused
from ..storage.db import reading
from .common import ServicesDep, audit_read, is_htmx, page, services, user
from .guards import login_required

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
POLL_SECONDS = 10


def delivery_context(request: Request, report_id: str | None) -> dict[str, Any]:
    """What partials/delivery.html needs; the status is looked up only when push is on."""
    svc = services(request)
    status = (svc.outbox.status_for_report(report_id)
              if report_id and svc.settings.ehr_push_enabled else None)
    return {"report_id": report_id, "delivery": status, "delivery_poll": POLL_SECONDS, "now": utcnow(),
            "delivery_message": None}


def _report(request: Request, report_id: str) -> Report:
    with reading(services(request).engine) as s:
        found = s.get(Report, report_id)
    if found is None or found.deleted_at is not None:
        raise NotFoundException()
    return found


class DeliveryController(Controller):
    path = "/reports/{report_id:str}/delivery"
    guards = [login_required]

    @get("/", sync_to_thread=True)
    def status(self, request: Request, report_id: FromPath[str]) -> Template:
        report = _report(request, report_id)
        audit_read(request, "DiagnosticReport", report.id, detail="EHR delivery status")
        return page(request, "partials/delivery.html", **delivery_context(request, report.id))

    @post("/retry", sync_to_thread=True)
    def retry(self, request: Request, services: ServicesDep, report_id: FromPath[str],
              data: Form) -> Template | Redirect:
        svc = services
        report = _report(request, report_id)
        outbox_id = (data.get("outbox_id") or "").strip()
        message = None
        with reading(svc.engine) as s:
            row = s.get(OutboxDelivery, outbox_id) if outbox_id else None
        if not svc.settings.ehr_push_enabled:
            message = "EHR push is disabled on this server: nothing can be sent."
        elif row is None or row.report_id != report.id:
            message = "This delivery was not found; reload the page."
        else:
            try:
                svc.outbox.retry(row.id, actor=user(request).username)
            except RetryRefused as exc:
                message = f"Not retried: {exc}."
            except NotFound:
                message = "This delivery was not found; reload the page."
        if not is_htmx(request):  # a plain form post (no script): back to the result page
            return Redirect(f"/studies/{report.study_id}", status_code=303)
        ctx = delivery_context(request, report.id)
        ctx["delivery_message"] = message
        return page(request, "partials/delivery.html", status_code=200 if message is None else 409, **ctx)
