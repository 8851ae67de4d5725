"""Server-side login sessions kept in the ``web_session`` table, so they survive restarts.

The browser holds a random token in an HttpOnly, SameSite=Lax cookie; the table keeps only its
SHA-256, so a copy of the database opens no session. A session ends at logout, after
``IDLE`` without a request, or ``ABSOLUTE`` after login, whichever comes first.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete

from ..records.tables import User, WebSession
from ..records.types import utcnow
from ..storage.db import writing

COOKIE = "cxr_session"
IDLE = timedelta(hours=1)
ABSOLUTE = timedelta(hours=12)   # one emergency-department shift
TOUCH_EVERY = timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, session: Session, user: User, source_ip: str | None) -> str:
        """A new session for ``user`` inside the caller's transaction; returns the cookie token."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        session.add(WebSession(token_sha256=_digest(token), user_id=user.id, created_at=now, last_seen_at=now,
                               expires_at=now + ABSOLUTE, source_ip=(source_ip or "")[:64] or None))
        # Expired rows of anyone are swept here: logins are rare enough to pay for it.
        session.exec(delete(WebSession).where(col(WebSession.expires_at) < now))
        return token

    def user_for(self, token: str | None) -> User | None:
        """The active user behind a cookie token, or None (expired, idle, unknown, user disabled)."""
        if not token or len(token) > 128:
            return None
        now = utcnow()
        with writing(self.engine) as s:
            row = s.get(WebSession, _digest(token))
            if row is None:
                return None
            if row.expires_at <= now or row.last_seen_at + IDLE <= now:
                s.delete(row)
                return None
            user = s.get(User, row.user_id)
            if user is None or user.disabled:
                s.delete(row)
                return None
            if now - row.last_seen_at >= TOUCH_EVERY:
                row.last_seen_at = now
                s.add(row)
            return user

    def end(self, token: str | None) -> None:
        if token:
            with writing(self.engine) as s:
                s.exec(delete(WebSession).where(col(WebSession.token_sha256) == _digest(token)))

    @staticmethod
    def end_all_for(session: Session, user_id: str) -> None:
        """Log a user out everywhere (disabled account, password reset)."""
        session.exec(delete(WebSession).where(col(WebSession.user_id) == user_id))
