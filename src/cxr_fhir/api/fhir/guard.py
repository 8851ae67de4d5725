"""The one guard every /fhir interaction passes: the bearer token, its scopes, and the audit event
(failures included) of what was asked and how it ended."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from litestar import Request, Response
from sqlalchemy.exc import OperationalError

from ...domain.errors import CxrError
from ...records.tables import ApiClient
from ...security import audit
from ...security.clients import allows, authenticate
from ...storage.db import reading, writing
from ...storage.fhir import search
from . import errors, transactions
from .negotiation import response_type, services_of
from .providers import PROVIDERS, Actor

log = logging.getLogger("cxr_fhir.fhir")
MAX_QUERY_BYTES = 8192  # the whole query string of one request (a search's limits are in storage/fhir/search)

INTERACTION_ACTION = {"read": "R", "vread": "R", "search-type": "E", "history-instance": "R",
                      "history-type": "R", "create": "C", "update": "U", "delete": "D", "transaction": "E",
                      "batch": "E", "operation": "E", "capabilities": "R"}


# Where the app's admission middleware leaves the client it authenticated (a request with a body),
# so the token is looked up once per request.
CLIENT_STATE_KEY = "api_client"


def client_of(request: Request) -> ApiClient:
    admitted = request.scope.get("state", {}).get(CLIENT_STATE_KEY)
    if isinstance(admitted, ApiClient):
        return admitted
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.FhirError(401, "a bearer token is required (Authorization: Bearer <token>)", "login",
                               headers={"WWW-Authenticate": 'Bearer realm="cxr-fhir"'})
    with reading(services_of(request).engine) as s:
        client = authenticate(s, token.strip())
    if client is None:
        raise errors.FhirError(401, "the bearer token is not valid or was revoked", "login",
                               headers={"WWW-Authenticate": 'Bearer realm="cxr-fhir", error="invalid_token"'})
    return client


# The audit trail is for administrators: only a scope that names it opens it, never a wildcard.
EXPLICIT_ONLY = {"AuditEvent"}


def require_criteria(client: ApiClient, resource_type: str, query: str) -> None:
    """Search criteria (a search, If-None-Exist, a conditional update) may read other types."""
    if query:
        for other in search.types_read(resource_type, parse_qsl(query, keep_blank_values=True)):
            require(client, other, "read")


def require(client: ApiClient, resource_type: str, access: str) -> None:
    if resource_type in EXPLICIT_ONLY:
        if f"system/{resource_type}.{access}" not in client.scopes and f"system/{resource_type}.*" not in client.scopes:
            raise errors.FhirError(403, f"{resource_type} needs a scope that names it (system/{resource_type}."
                                        f"{access}); wildcards do not open it", "forbidden")
        return
    if not allows(client.scopes, resource_type, access):
        raise errors.FhirError(403, f"the token's scopes do not allow {access} on {resource_type} "
                                    f"(needs system/{resource_type}.{access})", "forbidden")


def can_read(client: ApiClient) -> Callable[[str], bool]:
    """Whether the client may read a resource type, by the very rule ``require`` enforces (AuditEvent
    only through a scope that names it): for what a search returns besides its matches (includes,
    revincludes), each checked by its own type."""
    def readable(resource_type: str) -> bool:
        try:
            require(client, resource_type, "read")
        except errors.FhirError:
            return False
        return True

    return readable


def audit_interaction(request: Request, client: ApiClient | None, interaction: str, resource_type: str | None,
           resource_id: str | None, status: int, detail: str | None = None) -> None:
    outcome = "0" if status < 400 else ("4" if status < 500 else "8")
    query = request.url.query or None
    try:
        with writing(services_of(request).engine) as s:
            audit.record(s, action=INTERACTION_ACTION.get(interaction, "E"), subtype=interaction,
                         agent_type="client", agent_id=client.name if client else None, outcome=outcome,
                         entity_type=resource_type, entity_id=resource_id,
                         source_ip=request.client.host if request.client else None,
                         query=query, detail=detail)
    except OperationalError:
        # The database is down: the request has failed for the same reason; say so in the log.
        log.error("audit event not recorded: database unavailable",
                  extra={"interaction": interaction, "status": status})


def guarded(request: Request, interaction: str, resource_type: str | None, resource_id: str | None,
             access: str | None, work: Callable[[ApiClient], Response],
             audit_resource: str | None = None) -> Response:
    client = None
    try:
        provider = PROVIDERS.get(resource_type or "")
        if not (provider and provider.raw):  # a Binary answers with the image itself when asked
            response_type(request)
        if len(request.scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            raise errors.FhirError(400,
                                   f"the query string is longer than {MAX_QUERY_BYTES} bytes", "too-costly")
        client = client_of(request)
        if access and resource_type:
            require(client, resource_type, access)
        try:
            response = work(client)
        except CxrError as caught:  # the domain's errors, answered through the one table
            raise errors.from_domain(caught) from caught
    except errors.FhirError as exc:
        audit_interaction(request, client, interaction, audit_resource or resource_type, resource_id, exc.status,
               exc.diagnostics[:500])
        raise
    assert response.status_code is not None  # every FHIR response is built with its status (negotiation.respond)
    audit_interaction(request, client, interaction, audit_resource or resource_type, resource_id, response.status_code)
    return response


def actor_of(client: ApiClient) -> Actor:
    return Actor(f"client:{client.name}")


ENTRY_INTERACTION = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}


def audit_entries(request: Request, client: ApiClient, done: list[tuple[dict[str, Any], int]]) -> None:
    """Each entry of a batch or transaction is an access of its own, audited as such."""
    with writing(services_of(request).engine) as s:
        for req, status in done:
            rtype, rid, _, _ = transactions.split_url(req["url"])
            interaction = ENTRY_INTERACTION[req["method"]] if rid or req["method"] != "GET" else "search-type"
            audit.record(s, action=INTERACTION_ACTION[interaction], subtype=interaction, agent_type="client",
                         agent_id=client.name, outcome="0" if status < 400 else "4", entity_type=rtype,
                         entity_id=rid, source_ip=request.client.host if request.client else None)
