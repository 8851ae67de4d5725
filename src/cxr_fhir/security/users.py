"""User accounts: the admin creates them; there is no self sign-up."""

from __future__ import annotations

import re

from sqlmodel import Session

from ..domain.errors import Invalid
from ..storage.repositories import UserRepository
from ..storage.tables import User
from .passwords import hash_password

ROLES = ("doctor", "admin")
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class UserError(Invalid):
    """A user account cannot be made or changed as asked."""


def create_user(session: Session, username: str, password: str, role: str,
                display_name: str | None = None) -> User:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not _USERNAME.fullmatch(username):
        raise UserError("username: 2-64 lower-case letters, digits, '.', '_' or '-'")
    repo = UserRepository(session)
    if repo.by_username(username) is not None:
        raise UserError(f"user {username!r} already exists")
    try:
        password_hash = hash_password(password)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return repo.add(User(username=username, password_hash=password_hash, role=role, display_name=display_name))


def set_disabled(session: Session, username: str, disabled: bool) -> User:
    user = UserRepository(session).by_username(username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    user.disabled = disabled
    session.add(user)
    session.flush()
    return user


def reset_password(session: Session, username: str, password: str) -> User:
    """A new password set by an admin; also lifts a lock-out."""
    user = UserRepository(session).by_username(username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    try:
        user.password_hash = hash_password(password)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    user.failed_logins, user.locked_until = 0, None
    session.add(user)
    session.flush()
    return user
