"""Login and logout. Accounts are made by an admin (page or `cxr-fhir users create`); no sign-up.

Throttling: each failed password counts against the account; after ``MAX_FAILURES`` in a row the
account is locked for ``LOCK_FOR`` (User.failed_logins / locked_until), and a source address that
fails ``MAX_IP_FAILURES`` times within ``IP_WINDOW`` is refused for that window whatever the
username, so guessing across many accounts is slow too. Every outcome is audited.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from datetime import timedelta
from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from ..security import audit
from ..security.passwords import hash_password, verify_password
from ..storage.db import writing
from ..storage.repositories import UserRepository
from ..storage.types import utcnow
from .common import ServicesDep, client_ip, page
from .guards import current_user
from .sessions import ABSOLUTE, COOKIE, SessionStore

MAX_FAILURES = 5
LOCK_FOR = timedelta(minutes=15)
MAX_IP_FAILURES = 20
IP_WINDOW = 300.0  # seconds
GENERIC = "Wrong username or password."
# Checked against when the username is unknown, so both cases take the same time.
_DUMMY_HASH = hash_password("not-a-real-password-000")


class _IpThrottle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, ip: str) -> bool:
        with self._lock:
            q = self._fails[ip]
            while q and q[0] < time.monotonic() - IP_WINDOW:
                q.popleft()
            return len(q) >= MAX_IP_FAILURES

    def fail(self, ip: str) -> None:
        with self._lock:
            self._fails[ip].append(time.monotonic())


_throttle = _IpThrottle()


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never "//host" or "https://..." (open redirect).
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


class AuthController(Controller):
    @get("/login", sync_to_thread=True)
    def login_form(self, request: Request, next: FromQuery[str | None] = None) -> Template | Redirect:
        if current_user(request) is not None:
            return Redirect(_safe_next(next), status_code=303)
        return page(request, "login.html", next=_safe_next(next), username="", error=None)

    @post("/login", sync_to_thread=True)
    def login(self, request: Request, services: ServicesDep,
              data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]) -> Response:
        username = (data.get("username") or "").strip().lower()[:64]
        password = data.get("password") or ""
        target = _safe_next(data.get("next"))
        ip = client_ip(request) or "?"
        svc = services

        def refuse(message: str, detail: str, status: int = 401) -> Template:
            with writing(svc.engine) as s:
                audit.record(s, action="E", subtype="login", agent_type="user", agent_id=username or None,
                             outcome="4", source_ip=ip, detail=detail)
            return page(request, "login.html", status_code=status, next=target, username=username, error=message)

        if _throttle.blocked(ip):
            return refuse("Too many failed logins from this computer. Wait a few minutes and try again.",
                          "refused: too many failures from this address", 429)
        with writing(svc.engine) as s:
            user = UserRepository(s).by_username(username)
            now = utcnow()
            if user is None:
                verify_password(_DUMMY_HASH, password)
                outcome = "unknown user"
            elif user.locked_until is not None and user.locked_until > now:
                outcome = "locked"
            elif not verify_password(user.password_hash, password):
                user.failed_logins += 1
                if user.failed_logins >= MAX_FAILURES:
                    user.locked_until, user.failed_logins = now + LOCK_FOR, 0
                    outcome = f"wrong password; account locked for {int(LOCK_FOR.total_seconds() // 60)} minutes"
                else:
                    outcome = "wrong password"
                s.add(user)
            elif user.disabled:
                outcome = "account disabled"
            else:
                user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
                s.add(user)
                token = SessionStore(svc.engine).create(s, user, ip)
                audit.record(s, action="E", subtype="login", agent_type="user", agent_id=user.username,
                             source_ip=ip, detail="login")
                outcome = None
        if outcome is not None:
            _throttle.fail(ip)
            if outcome == "locked" or outcome.endswith("minutes"):
                return refuse("This account is locked after repeated failed logins. Try again in 15 minutes "
                              "or ask an administrator.", outcome, 423 if outcome == "locked" else 401)
            return refuse(GENERIC, outcome)
        response = Redirect(target, status_code=303)
        response.set_cookie(COOKIE, token, max_age=int(ABSOLUTE.total_seconds()), path="/", httponly=True,
                            samesite="lax", secure=svc.settings.secure_cookies)
        return response

    @post("/logout", sync_to_thread=True)
    def logout(self, request: Request, services: ServicesDep) -> Response:
        svc = services
        user = current_user(request)
        SessionStore(svc.engine).end(request.cookies.get(COOKIE))
        if user is not None:
            with writing(svc.engine) as s:
                audit.record(s, action="E", subtype="logout", agent_type="user", agent_id=user.username,
                             source_ip=client_ip(request), detail="logout")
        response = Redirect("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response
