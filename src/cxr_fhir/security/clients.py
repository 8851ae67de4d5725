"""FHIR API clients: bearer tokens (only their SHA-256 is kept) carrying SMART-style system scopes.

Creating and revoking a client is audited here, in the caller's unit of work, so the admin pages and
the command line leave the same trail: ``actor`` names who did it (a user name on the pages,
``cli:<os user>`` from the command line) and ``source_ip`` where from, when known."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlmodel import Session, select

from ..domain.errors import Invalid
from ..records.tables import ApiClient
from ..records.types import utcnow
from . import audit

# SMART v1 system scopes: system/<ResourceType or *>.<read | write | *>
_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]+)\.(read|write|\*)$")
TOKEN_PREFIX = "cxr_"
# The resource types the FHIR API serves (cxr_fhir.fhir.search_params.PARAMS, plus the types without
# searches). Spelled out here because the security room may not import the fhir room; a unit test
# (tests/integration/test_security_round_two.py) keeps the two in step.
KNOWN_TYPES = frozenset({"AuditEvent", "Device", "DiagnosticReport", "ImagingStudy", "Media", "Observation",
                         "Patient", "Provenance", "Binary", "OperationDefinition"})


class ClientError(Invalid):
    """An API client cannot be made or changed as asked."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_scopes(scopes: list[str]) -> list[str]:
    bad = [s for s in scopes if not _SCOPE.fullmatch(s)]
    if bad or not scopes:
        raise ClientError(f"invalid scope(s) {bad or '(none)'}: use system/<Resource|*>.<read|write|*>",
                          where=["scopes"])
    unknown = [s for s in scopes if (m := _SCOPE.fullmatch(s)) and m.group(1) != "*" and m.group(1) not in KNOWN_TYPES]
    if unknown:
        raise ClientError(f"unknown resource type in scope(s) {unknown}: use * or one of "
                          f"{', '.join(sorted(KNOWN_TYPES))}", where=["scopes"])
    return sorted(set(scopes))


def _audit(session: Session, action: str, client: ApiClient, detail: str, actor: str, source_ip: str | None) -> None:
    audit.record(session, action=action, subtype="client", agent_type="user", agent_id=actor,
                 entity_type="ApiClient", entity_id=client.id, source_ip=source_ip, detail=detail)


def create_client(session: Session, name: str, scopes: list[str], *, actor: str,
                  source_ip: str | None = None) -> tuple[ApiClient, str]:
    """Returns the client and its token; the token is shown once and never stored. ``actor`` is
    recorded as the client's creator."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise ClientError("name: 1-128 letters, digits, '.', '_' or '-'", where=["name"])
    if session.exec(select(ApiClient).where(ApiClient.name == name)).first() is not None:
        raise ClientError(f"client {name!r} already exists", where=["name"])
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(name=name, token_sha256=_digest(token), scopes=validate_scopes(scopes), created_by=actor)
    session.add(client)
    session.flush()
    _audit(session, "C", client, f"created client {name}", actor, source_ip)
    return client, token


def authenticate(session: Session, token: str) -> ApiClient | None:
    """The active client holding this token, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    digest = _digest(token)
    client = session.exec(select(ApiClient).where(ApiClient.token_sha256 == digest)).first()
    # Looking up the digest, not the token, leaks nothing useful through timing.
    if client is None or client.revoked_at is not None:
        return None
    return client


def revoke_client(session: Session, name: str, *, actor: str, source_ip: str | None = None) -> ApiClient:
    client = session.exec(select(ApiClient).where(ApiClient.name == name)).first()
    if client is None:
        raise ClientError(f"no client named {name!r}")
    if client.revoked_at is None:
        client.revoked_at = utcnow()
        session.add(client)
        session.flush()
    _audit(session, "U", client, f"revoked client {name}", actor, source_ip)
    return client


def allows(scopes: list[str], resource_type: str, access: str) -> bool:
    """Whether the scopes grant ``access`` (read | write) on ``resource_type``."""
    for scope in scopes:
        m = _SCOPE.fullmatch(scope)
        if m and m.group(1) in ("*", resource_type) and m.group(2) in ("*", access):
            return True
    return False
