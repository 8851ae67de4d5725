"""User accounts: the admin creates them; there is no self sign-up.

Every change is audited here, in the caller's unit of work, so the admin pages and the command line
leave the same trail: ``actor`` names who did it (a user name on the pages, ``cli:<os user>`` from
the command line) and ``source_ip`` where from, when known."""

from __future__ import annotations

import re

from sqlmodel import Session

from ..domain.errors import Invalid
from ..records.tables import User
from ..storage.repositories import UserRepository
from . import audit
from .passwords import hash_password

ROLES = ("doctor", "admin")
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class UserError(Invalid):
    """A user account cannot be made or changed as asked."""


def _audit(session: Session, action: str, user: User, detail: str, actor: str, source_ip: str | None) -> None:
    audit.record(session, action=action, subtype="user", agent_type="user", agent_id=actor,
                 entity_type="User", entity_id=user.id, source_ip=source_ip, detail=detail)


def create_user(session: Session, username: str, password: str, role: str, display_name: str | None = None, *,
                actor: str, source_ip: str | None = None) -> User:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}", where=["role"])
    if not _USERNAME.fullmatch(username):
        raise UserError("username: 2-64 lower-case letters, digits, '.', '_' or '-'", where=["username"])
    repo = UserRepository(session)
    if repo.by_username(username) is not None:
        raise UserError(f"user {username!r} already exists", where=["username"])
    try:
        password_hash = hash_password(password, username=username)
    except ValueError as exc:
        raise UserError(str(exc), where=["password"]) from exc
    user = repo.add(User(username=username, password_hash=password_hash, role=role, display_name=display_name))
    _audit(session, "C", user, f"created {user.role} {user.username}", actor, source_ip)
    return user


def set_disabled(session: Session, username: str, disabled: bool, *, actor: str,
                 source_ip: str | None = None) -> User:
    user = UserRepository(session).by_username(username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    user.disabled = disabled
    session.add(user)
    session.flush()
    _audit(session, "U", user, f"{'disabled' if disabled else 'enabled'} {username}", actor, source_ip)
    return user


def reset_password(session: Session, username: str, password: str, *, actor: str,
                   source_ip: str | None = None) -> User:
    """A new password set by an admin (it also clears the legacy lock-out columns)."""
    user = UserRepository(session).by_username(username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    try:
        user.password_hash = hash_password(password, username=user.username)
    except ValueError as exc:
        raise UserError(str(exc), where=["password"]) from exc
    user.failed_logins, user.locked_until = 0, None
    session.add(user)
    session.flush()
    _audit(session, "U", user, f"reset password of {username}", actor, source_ip)
    return user
