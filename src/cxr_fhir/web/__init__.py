"""The ER doctor's web pages: server-rendered Jinja2 with htmx partial updates.

``web_config(settings)`` gives what app.py registers: the route handlers (one Controller per page
group), the template engine, CSRF protection scoped away from /fhir, /health and /ready, the
security headers middleware and the error pages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from ..settings import PROJECT_ROOT, Settings
from .admin import AdminController
from .auth import AuthController
from .delivery import DeliveryController
from .errors import exception_handlers
from .headers import security_headers
from .patients import PatientController
from .studies import StudyController
from .worklist import WorklistController

TEMPLATES = PROJECT_ROOT / "templates"
STATIC = PROJECT_ROOT / "static"
# Bearer-token API and probes: no cookies there, so no CSRF (and no session) either.
NOT_WEB = ["^/fhir", "^/health$", "^/ready$", "^/static/"]


@dataclass
class WebConfig:
    route_handlers: list[Any]
    template_config: TemplateConfig
    csrf_config: CSRFConfig
    middleware: list[Any] = field(default_factory=list)
    exception_handlers: dict[Any, Any] = field(default_factory=dict)


def web_config(settings: Settings, api_errors: Callable[..., Any] | None = None) -> WebConfig:
    """``api_errors``: the app's own handler for HTTP errors outside the pages (/fhir, /health ...)."""
    static = create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False,
                                        cache_control=None)
    return WebConfig(
        route_handlers=[AuthController, WorklistController, PatientController, StudyController, DeliveryController,
                        AdminController, static],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        csrf_config=CSRFConfig(secret=settings.effective_secret_key, cookie_name="cxr_csrf",
                               cookie_secure=settings.cookies_secure, cookie_samesite="lax",
                               header_name="x-csrftoken", exclude=NOT_WEB),
        middleware=[security_headers],
        exception_handlers=exception_handlers(api_errors),
    )
