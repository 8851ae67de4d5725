"""Who may see a page: any logged-in user (doctor or admin), or an admin only."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from ..domain.text import has_control
from ..records.tables import User
from .sessions import COOKIE, SessionStore


def current_user(connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
    """The logged-in user of this request (looked up once, then kept on the request state)."""
    cached = connection.scope.get("state", {}).get("user", False)
    if cached is not False:
        return cached
    services = connection.app.state.services
    user = SessionStore(services.engine).user_for(connection.cookies.get(COOKIE))
    connection.state.user = user
    return user


def login_required(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if current_user(connection) is None:
        raise NotAuthorizedException("please log in")
    _no_control_characters(connection)


def _no_control_characters(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """An id, user name or finding in the path never holds a control character: such a path names
    nothing (404), and PostgreSQL would refuse U+0000 in the look-up."""
    if any(isinstance(v, str) and has_control(v) for v in connection.path_params.values()):
        raise NotFoundException()


def admin_required(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    user = current_user(connection)
    if user is None:
        raise NotAuthorizedException("please log in")
    if user.role != "admin":
        raise PermissionDeniedException("this page is for administrators")
    _no_control_characters(connection)
