"""The home page: recent studies across patients, most urgent and newest first, refreshing itself."""

from __future__ import annotations

from litestar import Controller, Request, get
from litestar.response import Template

from .common import ServicesDep, audit_read, page
from .guards import login_required
from .queries import WORKLIST_WINDOW, worklist
from .studies import COLOURS

POLL_SECONDS = 15


class WorklistController(Controller):
    guards = [login_required]

    @get("/", sync_to_thread=True)
    def home(self, request: Request, services: ServicesDep) -> Template:
        rows = worklist(services.engine)
        audit_read(request, "Study", None, subtype="search", detail=f"worklist, {len(rows)} studies")
        template = "partials/worklist_rows.html" if request.headers.get("hx-request") == "true" else "worklist.html"
        return page(request, template, rows=rows, poll=POLL_SECONDS, colours=COLOURS,
                    window_days=WORKLIST_WINDOW.days)
