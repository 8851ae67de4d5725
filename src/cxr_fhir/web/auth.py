"""Login and logout. Accounts are made by an admin (page or `cxr-fhir users create`); no sign-up.

Throttling (OWASP ASVS 2.2.1): growing delays, never a lock that an anonymous caller could set off.

* Per source address: after ``ADDRESS_FREE`` failures from one address (whatever the usernames),
  each further attempt from it must wait ``delay(n)`` after its last failure.
* Per account: after ``ACCOUNT_FREE`` failures on one username (from anywhere), an address that has
  itself failed on that username must wait ``delay(n)`` after *its own* last failure there before
  trying it again. An address with no failure on the account is not held back by the account's
  count, so the doctor, from another computer, with the right password, always gets in while
  someone hammers the account from elsewhere; each address of an attacker gets one try, then waits.

``delay(n)`` doubles from ``BASE_DELAY`` with every failure past the free ones, up to ``MAX_DELAY``.
An attempt inside its wait is answered 429 with Retry-After and the form's message, and its
password is not checked (nor counted). A record is forgotten ``FORGET`` after its last failure; a
success clears that address's failures on that account (not the address's own count, else one
valid account would reset the guessing of others). Unknown usernames are throttled the same way,
so throttling tells nothing of which accounts exist.

The counts live in this process's memory, one ``LoginThrottle`` per app instance, bounded to
``MAX_ENTRIES`` records per kind (the oldest go first): they are lost at a restart, and several
instances behind one load balancer each count on their own (an attacker gets that many times the
tries). The legacy columns User.failed_logins / locked_until are no longer set; a success clears them.

No user enumeration: an unknown user, a disabled account and a wrong password get the same status,
page and (an argon2 check against a dummy hash) time. Every outcome is audited (failures outcome 4).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.middleware.csrf import generate_csrf_token
from litestar.params import Body, FromQuery
from litestar.response import Redirect, Template

from ..records.types import utcnow
from ..security import audit
from ..security.passwords import hash_password, verify_password
from ..storage.db import writing
from ..storage.repositories import UserRepository
from .common import ServicesDep, client_ip, page
from .guards import current_user
from .sessions import ABSOLUTE, COOKIE, SessionStore

ACCOUNT_FREE = 5     # failures on one username before its failed addresses must wait
ADDRESS_FREE = 20    # failures from one address (many users behind one hospital NAT) before it must wait
BASE_DELAY = 1.0     # seconds: the first wait, doubled at each further failure
MAX_DELAY = 900.0    # seconds: the longest wait (15 minutes)
FORGET = 3600.0      # seconds after its last failure that a record is dropped
MAX_ENTRIES = 10_000
GENERIC = "Wrong username or password."
# Checked against when the username is unknown or the account disabled, so every case takes the same time.
_DUMMY_HASH = hash_password("not-a-real-password-000")


def delay(failures: int, free: int) -> float:
    """Seconds the next attempt must wait after the last failure, ``failures`` failures in."""
    if failures < free:
        return 0.0
    return min(MAX_DELAY, BASE_DELAY * 2.0 ** min(failures - free, 32))


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0  # clock time of the last failure


class _Table:
    """Records by key, oldest failure first, bounded; callers hold the throttle's lock."""

    def __init__(self, max_entries: int) -> None:
        self.rows: OrderedDict[Hashable, _Record] = OrderedDict()
        self.max_entries = max_entries

    def get(self, key: Hashable, now: float) -> _Record | None:
        row = self.rows.get(key)
        if row is not None and now - row.last >= FORGET:
            del self.rows[key]
            return None
        return row

    def fail(self, key: Hashable, now: float) -> _Record:
        row = self.get(key, now) or _Record()
        row.failures, row.last = row.failures + 1, now
        self.rows[key] = row
        self.rows.move_to_end(key)
        while self.rows:  # forgotten ones first, then the oldest past the bound
            oldest = next(iter(self.rows.values()))
            if now - oldest.last < FORGET and len(self.rows) <= self.max_entries:
                break
            self.rows.popitem(last=False)
        return row


class LoginThrottle:
    """Failed logins per address, per account, and per (account, address): see the module doc."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._addresses = _Table(max_entries)
        self._accounts = _Table(max_entries)
        self._pairs = _Table(max_entries)

    def wait(self, account: str, address: str) -> float:
        """Seconds before ``address`` may try ``account`` again; 0: now."""
        with self._lock:
            now = self.clock()
            waits = [0.0]
            if (a := self._addresses.get(address, now)) is not None:
                waits.append(a.last + delay(a.failures, ADDRESS_FREE) - now)
            pair = self._pairs.get((account, address), now)
            acc = self._accounts.get(account, now)
            if pair is not None and acc is not None:
                waits.append(pair.last + delay(acc.failures, ACCOUNT_FREE) - now)
            return max(waits)

    def failed(self, account: str, address: str) -> None:
        with self._lock:
            now = self.clock()
            self._addresses.fail(address, now)
            self._accounts.fail(account, now)
            self._pairs.fail((account, address), now)

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            self._pairs.rows.pop((account, address), None)


_state_lock = threading.Lock()


def login_throttle(request: Request) -> LoginThrottle:
    """The app instance's throttle (made on first use; a test may put its own in app.state first)."""
    state = request.app.state
    with _state_lock:
        throttle = state.get("login_throttle")
        if not isinstance(throttle, LoginThrottle):
            throttle = state["login_throttle"] = LoginThrottle()
        return throttle


def _wait_words(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minutes"


def _fresh_csrf(request: Request, response: Response) -> None:
    """A new CSRF cookie (login, logout): a token planted or read before cannot be used after."""
    cfg = request.app.csrf_config
    if cfg is None:
        return
    secure = cfg.cookie_secure or request.app.state.services.settings.cookies_secure
    response.set_cookie(cfg.cookie_name, generate_csrf_token(cfg.secret), path=cfg.cookie_path, secure=secure,
                        httponly=cfg.cookie_httponly, samesite=cfg.cookie_samesite, domain=cfg.cookie_domain)


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
        throttle = login_throttle(request)

        def refuse(message: str, detail: str, status: int = 401, headers: dict[str, str] | None = None) -> Template:
            with writing(svc.engine) as s:
                audit.record(s, action="E", subtype="login", agent_type="user", agent_id=username or None,
                             outcome="4", source_ip=ip, detail=detail)
            return page(request, "login.html", status_code=status, headers=headers, next=target, username=username,
                        error=message)

        wait = throttle.wait(username, ip)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return refuse(f"Too many failed logins. Wait {_wait_words(seconds)} and try again.",
                          f"refused: too many failures, retry in {seconds} s", 429, {"Retry-After": str(seconds)})
        with writing(svc.engine) as s:
            user = UserRepository(s).by_username(username)
            if user is None or user.disabled:
                verify_password(_DUMMY_HASH, password)  # the same time as a real check
                outcome: str | None = "unknown user" if user is None else "account disabled"
            elif not verify_password(user.password_hash, password):
                outcome = "wrong password"
            else:
                user.failed_logins, user.locked_until, user.last_login_at = 0, None, utcnow()
                s.add(user)
                token = SessionStore(svc.engine).create(s, user, ip)
                audit.record(s, action="E", subtype="login", agent_type="user", agent_id=user.username,
                             source_ip=ip, detail="login")
                outcome = None
        if outcome is not None:
            throttle.failed(username, ip)
            return refuse(GENERIC, outcome)
        throttle.succeeded(username, ip)
        response = Redirect(target, status_code=303)
        response.set_cookie(COOKIE, token, max_age=int(ABSOLUTE.total_seconds()), path="/", httponly=True,
                            samesite="lax", secure=svc.settings.cookies_secure)
        _fresh_csrf(request, response)
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
        _fresh_csrf(request, response)
        return response
