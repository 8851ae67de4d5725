"""The deliveries of a report on the result page: the EHR's status block (polled while pending) and
Retry, and one line per other destination (the PACS, the RIS) with its status, reason and Retry."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from ..domain.errors import NotFound
from ..domain.vocabulary import Destination
from ..records.tables import OutboxDelivery, Report
from ..records.types import utcnow
from ..services.outbox import Delivery, RetryRefused
from ..storage.db import reading
from .common import ServicesDep, audit_read, is_htmx, page, services, user
from .guards import login_required

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
POLL_SECONDS = 10
LABELS = {Destination.EHR: "EHR", Destination.PACS: "PACS", Destination.RIS: "RIS"}
OTHERS = (Destination.PACS, Destination.RIS)  # shown line by line below the EHR's block


def _line(destination: Destination, enabled: bool, delivery: Delivery | None, message: str | None = None
          ) -> dict[str, Any]:
    return {"destination": destination.value, "label": LABELS[destination], "enabled": enabled,
            "delivery": delivery, "message": message}


def delivery_context(request: Request, report_id: str | None) -> dict[str, Any]:
    """What partials/delivery.html (the EHR) and partials/destination_delivery.html (one line per
    other destination configured here, or ever queued for this report) need."""
    svc = services(request)
    statuses = svc.outbox.statuses_for_report(report_id) if report_id else {}
    configured = set(svc.settings.destinations)
    lines = [_line(d, d in configured, statuses.get(d)) for d in OTHERS if d in configured or d in statuses]
    return {"report_id": report_id,
            "delivery": statuses.get(Destination.EHR) if svc.settings.ehr_push_enabled else None,
            "destination_deliveries": lines if report_id else [],
            "delivery_poll": POLL_SECONDS, "now": utcnow(), "delivery_message": None}


def _report(request: Request, report_id: str) -> Report:
    with reading(services(request).engine) as s:
        found = s.get(Report, report_id)
    if found is None or found.deleted_at is not None:
        raise NotFoundException()
    return found


def _destination_partial(request: Request, report_id: str, destination: Destination, status_code: int = 200,
                         message: str | None = None) -> Template:
    svc = services(request)
    line = _line(destination, destination in set(svc.settings.destinations),
                 svc.outbox.status_for_report(report_id, destination), message)
    return page(request, "partials/destination_delivery.html", status_code=status_code, report_id=report_id, dd=line,
                delivery_poll=POLL_SECONDS, now=utcnow())


class DeliveryController(Controller):
    path = "/reports/{report_id:str}/delivery"
    guards = [login_required]

    @get("/", sync_to_thread=True)
    def status(self, request: Request, report_id: FromPath[str], destination: FromQuery[str] = "ehr") -> Template:
        report = _report(request, report_id)
        try:
            chosen = Destination(destination)
        except ValueError:
            raise NotFoundException() from None
        audit_read(request, "DiagnosticReport", report.id, detail=f"{LABELS[chosen]} delivery status")
        if chosen != Destination.EHR:
            return _destination_partial(request, report.id, chosen)
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
        destination = Destination(row.destination) if row is not None else Destination.EHR
        if destination not in set(svc.settings.destinations):
            message = ("EHR push is disabled on this server: nothing can be sent." if destination == Destination.EHR
                       else f"The {LABELS[destination]} is not configured on this server: nothing can be sent.")
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
        status_code = 200 if message is None else 409
        if destination != Destination.EHR and row is not None and row.report_id == report.id:
            return _destination_partial(request, report.id, destination, status_code, message)
        ctx = delivery_context(request, report.id)
        ctx["delivery_message"] = message
        return page(request, "partials/delivery.html", status_code=status_code, **ctx)
