"""Helpers every page group uses: rendering, the audit of reads, the client address."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.params import SkipValidation
from litestar.response import Template

from ..domain.findings import BY_NAME
from ..records.tables import User
from ..security import audit
from ..services.container import Services
from ..storage.db import writing

PRIORITY_LABEL = {"stat": "STAT", "urgent": "Urgent", "routine": "Routine", "queued": "Queued",
                  "analyzing": "Analysing", "failed": "Analysis failed"}
PRIORITY_RANK = {"stat": 0, "urgent": 1, "failed": 1, "routine": 2, "analyzing": 3, "queued": 3}
# The EHR delivery of a report, as the doctor reads it ('dead' is a delivery that will not be retried).
DELIVERY_LABEL = {"pending": "EHR: pending", "delivered": "EHR: delivered", "dead": "EHR: failed"}
STATUS_LABEL = {"preliminary": "Preliminary (to confirm)", "final": "Confirmed", "amended": "Amended",
                "cancelled": "Cancelled"}


# The Services object the app injects into handlers (app.py, `dependencies`). It is built by us, not
# parsed from the request, so Litestar is told not to validate it (nor to resolve its model types).
ServicesDep = SkipValidation[Services]


def services(request: Request) -> Services:
    """The one Services object the app factory built (settings, stores, models, services)."""
    services: Services = request.app.state.services
    return services


def user(request: Request) -> User:
    return request.state.user


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def display(finding: str) -> str:
    f = BY_NAME.get(finding)
    return f.display if f else finding.replace("_", " ")


def page(request: Request, name: str, status_code: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> Template:
    svc = services(request)
    base = {"user": _maybe_user(request),
            "push_enabled": svc.settings.ehr_push_enabled, "display": display,
            "priority_label": PRIORITY_LABEL, "status_label": STATUS_LABEL, "delivery_label": DELIVERY_LABEL,
            "htmx": is_htmx(request),
            "path": request.url.path}
    return Template(template_name=name, context={**base, **context}, status_code=status_code, headers=headers)


def _maybe_user(request: Request) -> User | None:
    return request.scope.get("state", {}).get("user")


def audit_read(request: Request, entity_type: str | None, entity_id: str | None, subtype: str = "read",
               detail: str | None = None) -> None:
    """Every view of patient data leaves a row (action R) naming the user, what and from where."""
    with writing(services(request).engine) as s:
        audit.record(s, action="R", subtype=subtype, agent_type="user", agent_id=user(request).username,
                     entity_type=entity_type, entity_id=entity_id, source_ip=client_ip(request), detail=detail)
