"""Administration: user accounts, FHIR API clients, model information, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template
from sqlmodel import select

from ..domain.errors import NotFound
from ..records.tables import ApiClient, User
from ..security.clients import ClientError, create_client, revoke_client
from ..security.users import ROLES, UserError, create_user, reset_password, set_disabled
from ..services.audit_log import AuditFilter, audit_page
from ..services.models import overview
from ..services.outbox import RetryRefused
from ..storage.db import reading, writing
from .common import ServicesDep, audit_read, client_ip, page, services, user
from .guards import admin_required
from .queries import DELIVERY_STATES, deliveries
from .sessions import SessionStore

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
AUDIT_PAGE = 100
DELIVERIES_PAGE = 200


class AdminController(Controller):
    path = "/admin"
    guards = [admin_required]

    def _actor(self, request: Request) -> dict[str, Any]:
        """Who does it and from where: the security functions write the audit event themselves."""
        return {"actor": user(request).username, "source_ip": client_ip(request)}

    def _users_page(self, request: Request, status_code: int = 200, **extra: Any) -> Template:
        with reading(services(request).engine) as s:
            users = s.exec(select(User).order_by(User.username)).all()
        ctx = {"users": users, "roles": ROLES, "errors": {}, "values": {"role": "doctor"}, "message": None}
        return page(request, "admin/users.html", status_code=status_code, **{**ctx, **extra})

    @get("/", sync_to_thread=False)
    def index(self) -> Redirect:
        return Redirect("/admin/users", status_code=303)

    @get("/users", sync_to_thread=True)
    def users(self, request: Request) -> Template:
        return self._users_page(request)

    @post("/users", sync_to_thread=True)
    def create_user(self, request: Request, services: ServicesDep, data: Form) -> Template:
        values = {"username": (data.get("username") or "").strip().lower(), "role": data.get("role") or "doctor",
                  "display_name": (data.get("display_name") or "").strip()}
        try:
            with writing(services.engine) as s:
                made = create_user(s, values["username"], data.get("password") or "", values["role"],
                                   values["display_name"] or None, **self._actor(request))
        except UserError as exc:
            # The security room names the field at fault; the message goes next to it.
            field = exc.where[0] if exc.where else "username"
            return self._users_page(request, 422, errors={field: str(exc)}, values=values)
        return self._users_page(request, message=f"Created {made.role} account “{made.username}”.")

    @post("/users/{username:str}/disable", sync_to_thread=True)
    def disable(self, request: Request, services: ServicesDep, username: FromPath[str], data: Form) -> Template:
        disabled = data.get("disabled", "1") == "1"
        if username == user(request).username and disabled:
            return self._users_page(request, 409, message="You cannot disable your own account.")
        try:
            with writing(services.engine) as s:
                target = set_disabled(s, username, disabled, **self._actor(request))
                if disabled:
                    SessionStore.end_all_for(s, target.id)
        except UserError as exc:
            return self._users_page(request, 404, message=str(exc))
        return self._users_page(request, message=f"{'Disabled' if disabled else 'Enabled'} “{username}”.")

    @post("/users/{username:str}/password", sync_to_thread=True)
    def password(self, request: Request, services: ServicesDep, username: FromPath[str], data: Form) -> Template:
        try:
            with writing(services.engine) as s:
                target = reset_password(s, username, data.get("password") or "", **self._actor(request))
                SessionStore.end_all_for(s, target.id)
        except UserError as exc:
            return self._users_page(request, 422, message=f"{username}: {exc}")
        return self._users_page(request, message=f"New password set for “{username}”; their sessions were ended.")

    # -- API clients ----------------------------------------------------------------------
    def _clients_page(self, request: Request, status_code: int = 200, **extra: Any) -> Template:
        with reading(services(request).engine) as s:
            clients = s.exec(select(ApiClient).order_by(ApiClient.name)).all()
        ctx: dict[str, Any] = {"clients": clients, "errors": {}, "values": {}, "token": None, "message": None}
        return page(request, "admin/clients.html", status_code=status_code, **{**ctx, **extra})

    @get("/clients", sync_to_thread=True)
    def clients(self, request: Request) -> Template:
        return self._clients_page(request)

    @post("/clients", sync_to_thread=True)
    def create_client(self, request: Request, services: ServicesDep, data: Form) -> Template:
        name = (data.get("name") or "").strip()
        scopes = (data.get("scopes") or "").split()
        try:
            with writing(services.engine) as s:
                _, token = create_client(s, name, scopes, **self._actor(request))
        except ClientError as exc:
            field = exc.where[0] if exc.where else "name"
            return self._clients_page(request, 422, errors={field: str(exc)},
                                      values={"name": name, "scopes": data.get("scopes") or ""})
        return self._clients_page(request, token=token, message=f"Created client “{name}”.")

    @post("/clients/{name:str}/revoke", sync_to_thread=True)
    def revoke(self, request: Request, services: ServicesDep, name: FromPath[str]) -> Template:
        try:
            with writing(services.engine) as s:
                revoke_client(s, name, **self._actor(request))
        except ClientError as exc:
            return self._clients_page(request, 404, message=str(exc))
        return self._clients_page(request, message=f"Revoked “{name}”: its token no longer works.")

    # -- model ------------------------------------------------------------------------------
    @get("/model", sync_to_thread=True)
    def model(self, request: Request, services: ServicesDep) -> Template:
        svc = services
        info = overview(svc.settings.weights_dir, svc.models)
        return page(request, "admin/model.html", card=info.card, classifier=info.classifier, detector=info.detector,
                    thresholds=info.thresholds, manifest_error=info.manifest_error, loaded=info.loaded is not None,
                    model_info=info.loaded, model_error=svc.model_error)

    # -- EHR deliveries -------------------------------------------------------------------------
    def _deliveries_page(self, request: Request, status: str, status_code: int = 200,
                         message: str | None = None, bad: bool = False) -> Template:
        status = status if status in DELIVERY_STATES else ""
        rows = deliveries(services(request).engine, status or None, limit=DELIVERIES_PAGE)
        # The rows name patients: reading them is audited like any other view of patient data.
        audit_read(request, "DiagnosticReport", None, subtype="search",
                   detail=f"EHR deliveries ({status or 'all'}), {len(rows)} rows")
        return page(request, "admin/deliveries.html", status_code=status_code, rows=rows, status=status,
                    states=DELIVERY_STATES, backlog=services(request).outbox.backlog(),
                    message=message, bad=bad, limit=DELIVERIES_PAGE)

    @get("/deliveries", sync_to_thread=True)
    def delivery_list(self, request: Request, status: FromQuery[str] = "") -> Template:
        return self._deliveries_page(request, status)

    @post("/deliveries/{outbox_id:str}/retry", sync_to_thread=True)
    def retry_delivery(self, request: Request, services: ServicesDep, outbox_id: FromPath[str], data: Form) -> Template:
        status = data.get("status") or ""
        if not services.settings.destinations:  # the EHR, the PACS, the RIS: none is configured
            return self._deliveries_page(request, status, 409, "EHR push is disabled on this server: "
                                                                "nothing can be sent.", bad=True)
        try:
            # OutboxService.retry writes the audit event (delivery-retry, naming the admin).
            row = services.outbox.retry(outbox_id, actor=user(request).username)
        except RetryRefused as exc:
            return self._deliveries_page(request, status, 409, f"Not retried: {exc}.", bad=True)
        except NotFound:
            return self._deliveries_page(request, status, 404, "That delivery was not found.", bad=True)
        return self._deliveries_page(request, status, message=f"Delivery {row.id[:8]} of report version "
                                                              f"{row.report_version} is queued for an attempt now.")

    # -- audit ----------------------------------------------------------------------------------
    @get("/audit", sync_to_thread=True)
    def audit_log(self, request: Request, services: ServicesDep, agent: FromQuery[str] = "",
                  subtype: FromQuery[str] = "", action: FromQuery[str] = "", since: FromQuery[str] = "",
                  until: FromQuery[str] = "", page_no: FromQuery[int] = 1) -> Template:
        with reading(services.engine) as s:
            found = audit_page(s, AuditFilter(agent, subtype, action, since, until), page_no)
        return page(request, "admin/audit.html", events=found.events, more=found.more, page_no=found.page_no,
                    errors=found.errors, subtypes=found.subtypes,
                    f={"agent": agent, "subtype": subtype, "action": action, "since": since, "until": until})
