"""The FHIR interactions on one database session, shared by the REST routes and by batch/transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlmodel import Session

from ...records.tables import FhirResource
from ...storage.fhir import search, store
from . import errors
from .providers import PROVIDERS, Actor, Provider, ReadOnly, parse


@dataclass
class Result:
    status: int
    resource: dict[str, Any] | None = None
    resource_type: str | None = None
    id: str | None = None
    version: int | None = None
    last_modified: datetime | None = None
    created: bool = False
    raw: bytes | None = None  # a Binary's bytes, for a client that asks for them
    content_type: str | None = None

    @property
    def location(self) -> str | None:
        if self.resource_type and self.id and self.version:
            return f"{self.resource_type}/{self.id}/_history/{self.version}"
        return None


def _result(row: FhirResource, status: int, created: bool = False) -> Result:
    return Result(status, row.content, row.resource_type, row.id, row.version_id, row.last_updated, created)


def provider(resource_type: str, services: Any, stored: bool = True) -> Provider:
    """The type's provider; ``stored``: only a type kept in the FHIR store will do (search,
    history, writes), the others (Binary, OperationDefinition) can only be read."""
    cls = PROVIDERS.get(resource_type)
    if cls is None or (stored and not cls.stored):
        raise errors.FhirError(404, f"resource type {resource_type!r} is not supported here; see /fhir/metadata",
                               "not-supported")
    return cls(resource_type, services)


def read(s: Session, services: Any, resource_type: str, rid: str) -> Result:
    found = provider(resource_type, services, stored=False).read(s, rid)
    if isinstance(found, ReadOnly):
        return Result(200, found.content, resource_type, rid, raw=found.raw, content_type=found.content_type)
    return _result(found, 200)


def vread(s: Session, resource_type: str, rid: str, version: str) -> Result:
    provider(resource_type, None)
    if not version.isdecimal() or int(version) > 2**31 - 1:
        raise errors.not_found(f"{resource_type}/{rid}/_history/{version} is not known")
    row = store.vread(s, resource_type, rid, int(version))
    return Result(200, row.content, resource_type, rid, row.version_id, row.last_updated)


def matches(s: Session, resource_type: str, criteria: str | list[tuple[str, str]]) -> list[FhirResource]:
    pairs = parse_qsl(criteria, keep_blank_values=True) if isinstance(criteria, str) else criteria
    if not pairs:
        raise errors.bad_request("a conditional interaction needs search criteria")
    query, _ = search.parse(resource_type, pairs)
    query.count = 2
    found, _ = store.search(s, resource_type, query)
    return found


def create(s: Session, services: Any, resource_type: str, body: Any, actor: Actor,
           if_none_exist: str | None = None, new_id: str | None = None) -> Result:
    prov = provider(resource_type, services)
    content = parse(resource_type, body)
    if if_none_exist:
        found = matches(s, resource_type, if_none_exist)
        if len(found) > 1:
            raise errors.precondition_failed(f"If-None-Exist matches {len(found)} resources; be more specific")
        if found:
            return _result(found[0], 200)
    return _result(prov.create(s, content, actor, new_id=new_id), 201, created=True)


def update(s: Session, services: Any, resource_type: str, rid: str, body: Any, actor: Actor,
           if_match: int | None = None) -> Result:
    prov = provider(resource_type, services)
    content = parse(resource_type, body)
    if content.get("id") != rid:
        raise errors.bad_request(f"the resource id {content.get('id')!r} must equal the id in the URL ({rid})",
                                 [f"{resource_type}.id"])
    row, created = prov.update(s, rid, content, actor, if_match)
    return _result(row, 201 if created else 200, created)


def conditional_update(s: Session, services: Any, resource_type: str, criteria: str | list[tuple[str, str]],
                       body: Any, actor: Actor) -> Result:
    found = matches(s, resource_type, criteria)
    if len(found) > 1:
        raise errors.precondition_failed(f"the criteria match {len(found)} resources; be more specific")
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be a JSON object holding one FHIR resource")
    body_id = body.get("id")
    if found:
        if body_id and body_id != found[0].id:
            raise errors.bad_request(f"the resource id {body_id!r} is not the matching resource's id")
        body = {**body, "id": found[0].id}
        return update(s, services, resource_type, found[0].id, body, actor)
    return create(s, services, resource_type, body, actor)


def delete(s: Session, services: Any, resource_type: str, rid: str, actor: Actor, if_match: int | None = None
           ) -> Result:
    provider(resource_type, services).delete(s, rid, actor, if_match)
    row = store.get_row(s, resource_type, rid)
    return Result(200, errors.outcome("information", "informational", f"{resource_type}/{rid} deleted"),
                  None, rid, row.version_id if row else None)
