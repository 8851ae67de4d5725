"""Administration: user accounts, FHIR API clients, model information, the audit log."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template
from sqlmodel import Session, col, select

from ..inference.registry import read_manifest
from ..security import audit
from ..security.clients import ClientError, create_client, revoke_client
from ..security.users import ROLES, UserError, create_user, reset_password, set_disabled
from ..services.outbox import OutboxService, RetryRefused
from ..domain.errors import NotFound
from ..storage.db import reading, writing
from ..storage.tables import ApiClient, AuditEvent, User
from .common import audit_read, client_ip, page, services, user
from .queries import DELIVERY_STATES, deliveries
from .guards import admin_required
from .sessions import SessionStore

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
AUDIT_PAGE = 100
DELIVERIES_PAGE = 200


class AdminController(Controller):
    path = "/admin"
    guards = [admin_required]

    def _admin_audit(self, request: Request, s: Session, action: str, subtype: str, entity_type: str,
                     entity_id: str | None, detail: str) -> None:
        audit.record(s, action=action, subtype=subtype, agent_type="user", agent_id=user(request).username,
                     entity_type=entity_type, entity_id=entity_id, source_ip=client_ip(request), detail=detail)

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
    def create_user(self, request: Request, data: Form) -> Template:
        values = {"username": (data.get("username") or "").strip().lower(), "role": data.get("role") or "doctor",
                  "display_name": (data.get("display_name") or "").strip()}
        try:
            with writing(services(request).engine) as s:
                made = create_user(s, values["username"], data.get("password") or "", values["role"],
                                   values["display_name"] or None)
                self._admin_audit(request, s, "C", "user", "User", made.id, f"created {made.role} {made.username}")
        except UserError as exc:
            text = str(exc)
            field = ("password" if "password" in text else "role" if text.startswith("role")
                     else "username")
            return self._users_page(request, 422, errors={field: text}, values=values)
        return self._users_page(request, message=f"Created {made.role} account “{made.username}”.")

    @post("/users/{username:str}/disable", sync_to_thread=True)
    def disable(self, request: Request, username: FromPath[str], data: Form) -> Template:
        disabled = data.get("disabled", "1") == "1"
        if username == user(request).username and disabled:
            return self._users_page(request, 409, message="You cannot disable your own account.")
        try:
            with writing(services(request).engine) as s:
                target = set_disabled(s, username, disabled)
                if disabled:
                    SessionStore.end_all_for(s, target.id)
                self._admin_audit(request, s, "U", "user", "User", target.id,
                                  f"{'disabled' if disabled else 'enabled'} {username}")
        except UserError as exc:
            return self._users_page(request, 404, message=str(exc))
        return self._users_page(request, message=f"{'Disabled' if disabled else 'Enabled'} “{username}”.")

    @post("/users/{username:str}/password", sync_to_thread=True)
    def password(self, request: Request, username: FromPath[str], data: Form) -> Template:
        try:
            with writing(services(request).engine) as s:
                target = reset_password(s, username, data.get("password") or "")
                SessionStore.end_all_for(s, target.id)
                self._admin_audit(request, s, "U", "user", "User", target.id, f"reset password of {username}")
        except UserError as exc:
            return self._users_page(request, 422, message=f"{username}: {exc}")
        return self._users_page(request, message=f"New password set for “{username}”; their sessions were ended.")

    # -- API clients ----------------------------------------------------------------------
    def _clients_page(self, request: Request, status_code: int = 200, **extra: Any) -> Template:
        with reading(services(request).engine) as s:
            clients = s.exec(select(ApiClient).order_by(ApiClient.name)).all()
        ctx = {"clients": clients, "errors": {}, "values": {}, "token": None, "message": None}
        return page(request, "admin/clients.html", status_code=status_code, **{**ctx, **extra})

    @get("/clients", sync_to_thread=True)
    def clients(self, request: Request) -> Template:
        return self._clients_page(request)

    @post("/clients", sync_to_thread=True)
    def create_client(self, request: Request, data: Form) -> Template:
        name = (data.get("name") or "").strip()
        scopes = (data.get("scopes") or "").split()
        try:
            with writing(services(request).engine) as s:
                client, token = create_client(s, name, scopes, created_by=user(request).username)
                self._admin_audit(request, s, "C", "client", "ApiClient", client.id, f"created client {name}")
        except ClientError as exc:
            field = "scopes" if "scope" in str(exc) else "name"
            return self._clients_page(request, 422, errors={field: str(exc)},
                                      values={"name": name, "scopes": data.get("scopes") or ""})
        return self._clients_page(request, token=token, message=f"Created client “{name}”.")

    @post("/clients/{name:str}/revoke", sync_to_thread=True)
    def revoke(self, request: Request, name: FromPath[str]) -> Template:
        try:
            with writing(services(request).engine) as s:
                client = revoke_client(s, name)
                self._admin_audit(request, s, "U", "client", "ApiClient", client.id, f"revoked client {name}")
        except ClientError as exc:
            return self._clients_page(request, 404, message=str(exc))
        return self._clients_page(request, message=f"Revoked “{name}”: its token no longer works.")

    # -- model ------------------------------------------------------------------------------
    @get("/model", sync_to_thread=True)
    def model(self, request: Request) -> Template:
        svc = services(request)
        card_path = svc.settings.weights_dir / "MODEL_CARD.md"
        card = card_path.read_text() if card_path.exists() else "(weights/MODEL_CARD.md is missing)"
        try:
            manifest = read_manifest(svc.settings.weights_dir)
        except Exception as exc:  # shown, not raised: the page explains what is wrong
            manifest, error = {}, str(exc)
        else:
            error = None
        classifier = manifest.get("classifier", {})
        # What is in force: the loaded models' thresholds, else what the manifest on disk says.
        thresholds = (dict(svc.models.classifier.thresholds) if svc.models is not None
                      else classifier.get("thresholds", {}))
        return page(request, "admin/model.html", card=card, classifier=classifier, detector=manifest.get("detector"),
                    thresholds=thresholds, manifest_error=error, loaded=svc.models is not None,
                    model_info=getattr(svc.models, "model_info", None), model_error=svc.model_error)

    # -- EHR deliveries -------------------------------------------------------------------------
    def _deliveries_page(self, request: Request, status: str, status_code: int = 200,
                         message: str | None = None, bad: bool = False) -> Template:
        status = status if status in DELIVERY_STATES else ""
        rows = deliveries(services(request).engine, status or None, limit=DELIVERIES_PAGE)
        # The rows name patients: reading them is audited like any other view of patient data.
        audit_read(request, "DiagnosticReport", None, subtype="search",
                   detail=f"EHR deliveries ({status or 'all'}), {len(rows)} rows")
        return page(request, "admin/deliveries.html", status_code=status_code, rows=rows, status=status,
                    states=DELIVERY_STATES, backlog=OutboxService(services(request).engine).backlog(),
                    message=message, bad=bad, limit=DELIVERIES_PAGE)

    @get("/deliveries", sync_to_thread=True)
    def delivery_list(self, request: Request, status: FromQuery[str] = "") -> Template:
        return self._deliveries_page(request, status)

    @post("/deliveries/{outbox_id:str}/retry", sync_to_thread=True)
    def retry_delivery(self, request: Request, outbox_id: FromPath[str], data: Form) -> Template:
        status = data.get("status") or ""
        if not services(request).settings.ehr_push_enabled:
            return self._deliveries_page(request, status, 409, "EHR push is disabled on this server: "
                                                                "nothing can be sent.", bad=True)
        try:
            # OutboxService.retry writes the audit event (delivery-retry, naming the admin).
            row = OutboxService(services(request).engine).retry(outbox_id, actor=user(request).username)
        except RetryRefused as exc:
            return self._deliveries_page(request, status, 409, f"Not retried: {exc}.", bad=True)
        except NotFound:
            return self._deliveries_page(request, status, 404, "That delivery was not found.", bad=True)
        return self._deliveries_page(request, status, message=f"Delivery {row.id[:8]} of report version "
                                                              f"{row.report_version} is queued for an attempt now.")

    # -- audit ----------------------------------------------------------------------------------
    @get("/audit", sync_to_thread=True)
    def audit_log(self, request: Request, agent: FromQuery[str] = "", subtype: FromQuery[str] = "",
                  action: FromQuery[str] = "", since: FromQuery[str] = "", until: FromQuery[str] = "",
                  page_no: FromQuery[int] = 1) -> Template:
        stmt = select(AuditEvent)
        if agent.strip():
            stmt = stmt.where(AuditEvent.agent_id == agent.strip())
        if subtype.strip():
            stmt = stmt.where(AuditEvent.subtype == subtype.strip())
        if action.strip():
            stmt = stmt.where(AuditEvent.action == action.strip()[:1])
        errors: dict[str, str] = {}
        for name, raw, shift in (("since", since, timedelta(0)), ("until", until, timedelta(days=1))):
            if raw.strip():
                try:
                    moment = datetime.combine(date.fromisoformat(raw.strip()), time(0), tzinfo=UTC) + shift
                except ValueError:
                    errors[name] = "use YYYY-MM-DD"
                    continue
                stmt = stmt.where(col(AuditEvent.recorded) >= moment if name == "since"
                                  else col(AuditEvent.recorded) < moment)
        page_no = min(max(1, page_no), 10**6)  # beyond any list; keeps the offset a database integer
        with reading(services(request).engine) as s:
            events = s.exec(stmt.order_by(col(AuditEvent.recorded).desc())
                            .offset((page_no - 1) * AUDIT_PAGE).limit(AUDIT_PAGE + 1)).all()
            subtypes = sorted(s.exec(select(AuditEvent.subtype).distinct()).all())
        return page(request, "admin/audit.html", events=events[:AUDIT_PAGE], more=len(events) > AUDIT_PAGE,
                    page_no=page_no, errors=errors, subtypes=subtypes,
                    f={"agent": agent, "subtype": subtype, "action": action, "since": since, "until": until})
