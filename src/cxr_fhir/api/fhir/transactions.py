"""POST /fhir with a batch or transaction Bundle.

A transaction is one database transaction: every entry succeeds or nothing is stored. Entries
run in the order the specification gives (DELETE, POST, PUT, GET); urn:uuid full URLs are given
their ids before anything runs, so entries may refer to each other in any order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ...domain.errors import CxrError
from ...records.types import new_id
from ...storage.db import writing
from ...storage.fhir import search
from . import errors, interactions
from .providers import Actor

MAX_ENTRIES = 500
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def split_url(url: str) -> tuple[str, str | None, str | None, list[tuple[str, str]]]:
    """'Patient/1/_history/2?x=y' -> (type, id, version, query pairs)."""
    parts = urlsplit(url)
    segments = [p for p in parts.path.strip("/").split("/") if p]
    if not segments:
        raise errors.bad_request(f"entry request url {url!r} names no resource type")
    rtype = segments[0]
    rid = segments[1] if len(segments) > 1 else None
    version = segments[3] if len(segments) > 3 and segments[2] == "_history" else None
    return rtype, rid, version, parse_qsl(parts.query, keep_blank_values=True)


def _relink(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _relink(v, ids))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_relink(v, ids) for v in value]
    return value


def _unresolved(value: Any) -> str | None:
    """The first urn:uuid reference left after resolution, if any."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            return ref
        return next((r for v in value.values() if (r := _unresolved(v))), None)
    if isinstance(value, list):
        return next((r for v in value if (r := _unresolved(v))), None)
    return None


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise errors.bad_request("Bundle.entry must be a list")
    if len(entries) > MAX_ENTRIES:
        raise errors.FhirError(413, f"the Bundle has {len(entries)} entries; at most {MAX_ENTRIES} are accepted",
                               "too-costly")
    for i, entry in enumerate(entries):
        req = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(req, dict) or req.get("method") not in ORDER or not isinstance(req.get("url"), str):
            raise errors.bad_request(f"entry {i} needs request.method (GET, POST, PUT, DELETE) and request.url",
                                     [f"Bundle.entry[{i}].request"])
        # The rest of an entry is read without further checks: wrong JSON types are the client's error.
        for key in ("ifMatch", "ifNoneExist", "ifNoneMatch", "ifModifiedSince"):
            if key in req and not isinstance(req[key], str):
                raise errors.bad_request(f"entry {i}: request.{key} must be a string",
                                         [f"Bundle.entry[{i}].request.{key}"])
        if "fullUrl" in entry and not isinstance(entry["fullUrl"], str):
            raise errors.bad_request(f"entry {i}: fullUrl must be a string", [f"Bundle.entry[{i}].fullUrl"])
        if entry.get("resource") is not None and not isinstance(entry["resource"], dict):
            raise errors.bad_request(f"entry {i}: resource must be a JSON object", [f"Bundle.entry[{i}].resource"])
    return entries


def _run(s: Session, services: Any, entry: dict[str, Any], actor: Actor, base: str,
         can_read: Callable[[str], bool], assigned: dict[int, str] | None = None, index: int = 0
         ) -> tuple[interactions.Result, dict | None]:
    req = entry["request"]
    method, (rtype, rid, version, pairs) = req["method"], split_url(req["url"])
    resource = entry.get("resource")
    if method in ("GET", "HEAD"):
        if not can_read(rtype):  # checked before the Bundle runs too; a read returns nothing else
            raise errors.FhirError(403, f"the token's scopes do not allow read on {rtype}", "forbidden")
        if rid and version:
            return interactions.vread(s, rtype, rid, version), None
        if rid:
            return interactions.read(s, services, rtype, rid), None
        interactions.provider(rtype, services)
        return interactions.Result(200), search.bundle(s, rtype, pairs, base, can_read=can_read)
    if_match = version_from_etag(req.get("ifMatch"))
    if method == "DELETE":
        if not rid:
            raise errors.FhirError(405, "conditional delete is not supported", "not-supported")
        return interactions.delete(s, services, rtype, rid, actor, if_match), None
    if method == "POST":
        new = (assigned or {}).get(index)
        return interactions.create(s, services, rtype, resource, actor, req.get("ifNoneExist"), new_id=new), None
    if rid:
        return interactions.update(s, services, rtype, rid, resource, actor, if_match), None
    if pairs:
        return interactions.conditional_update(s, services, rtype, pairs, resource, actor), None
    raise errors.bad_request(f"PUT {req['url']!r} needs an id or search criteria")


def version_from_etag(value: str | None) -> int | None:
    if not value:
        return None
    digits = value.removeprefix("W/").strip('"')
    if not digits.isdecimal():
        raise errors.bad_request(f"If-Match {value!r} is not a version ETag like W/\"3\"")
    return int(digits)


def _response(result: interactions.Result, payload: dict | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"response": {"status": _status(result.status)}}
    if result.location:
        entry["response"]["location"] = result.location
        entry["response"]["etag"] = f'W/"{result.version}"'
    if result.last_modified:
        entry["response"]["lastModified"] = result.last_modified.isoformat(timespec="milliseconds")
    body = payload or (result.resource if result.resource_type else None)
    if body is not None:
        entry["resource"] = body
    elif result.resource and result.resource.get("resourceType") == "OperationOutcome":
        entry["response"]["outcome"] = result.resource
    return entry


def _preassign(s: Session, services: Any, entries: list[dict[str, Any]]) -> tuple[dict[str, str], dict[int, str]]:
    """fullUrl (urn:uuid) -> 'Type/id' for every entry that creates or updates, before any runs."""
    refs: dict[str, str] = {}
    assigned: dict[int, str] = {}
    # DELETE entries run first: what they delete cannot be what a later entry matches.
    deleting = {split_url(e["request"]["url"])[:2] for e in entries if e["request"]["method"] == "DELETE"}

    def surviving(rtype: str, criteria) -> list:
        return [row for row in interactions.matches(s, rtype, criteria) if (rtype, row.id) not in deleting]

    for i, entry in enumerate(entries):
        req, full = entry["request"], entry.get("fullUrl", "")
        rtype, rid, _, pairs = split_url(req["url"])
        target: str | None = None
        if req["method"] == "POST":
            if req.get("ifNoneExist"):
                found = surviving(rtype, req["ifNoneExist"])
                if len(found) == 1:
                    target = found[0].id
            if target is None:
                target = assigned[i] = new_id()
        elif req["method"] == "PUT":
            if rid:
                target = rid
            elif pairs:
                found = surviving(rtype, pairs)
                target = found[0].id if len(found) == 1 else None
                if target is None and not found:
                    target = new_id()
                    entry["resource"] = {**(entry.get("resource") or {}), "id": target}
                    entry["request"] = {**req, "url": f"{rtype}/{target}"}
        if target and full.startswith("urn:uuid:"):
            refs[full] = f"{rtype}/{target}"
    return refs, assigned


def process(engine: Engine, services: Any, bundle: dict[str, Any], actor: Actor, base: str, *,
            can_read: Callable[[str], bool]) -> tuple[dict[str, Any], list[tuple[dict[str, Any], int]]]:
    """The response Bundle, and (entry request, status) pairs for the audit trail. ``can_read``
    (resource type -> whether the caller may read it) decides what a GET entry may return."""
    kind = bundle.get("type") if isinstance(bundle, dict) else None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or kind not in ("batch", "transaction"):
        raise errors.bad_request("POST /fhir takes a Bundle of type batch or transaction")
    entries = copy.deepcopy(_entries(bundle))
    order = sorted(range(len(entries)), key=lambda i: ORDER[entries[i]["request"]["method"]])
    responses: list[dict[str, Any] | None] = [None] * len(entries)
    audit: list[tuple[dict[str, Any], int]] = []
    if kind == "transaction":
        with writing(engine) as s:
            refs, assigned = _preassign(s, services, entries)
            for i in order:
                entry = _relink(entries[i], refs)
                dangling = _unresolved(entry.get("resource"))
                if dangling:
                    raise errors.bad_request(f"entry {i} refers to {dangling}, which no entry of this transaction "
                                             "creates; nothing was stored", [f"Bundle.entry[{i}].resource"])
                try:
                    result, payload = _run(s, services, entry, actor, base, can_read, assigned, i)
                except (errors.FhirError, CxrError) as caught:
                    exc = errors.as_fhir(caught)
                    exc.diagnostics = f"transaction failed at entry {i} ({entry['request']['method']} " \
                                      f"{entry['request']['url']}); nothing was stored: {exc.diagnostics}"
                    raise exc from caught
                responses[i] = _response(result, payload)
                audit.append((entry["request"], result.status))
    else:
        for i in order:
            try:
                with writing(engine) as s:
                    result, payload = _run(s, services, entries[i], actor, base, can_read)
                responses[i] = _response(result, payload)
                audit.append((entries[i]["request"], result.status))
            except (errors.FhirError, CxrError) as caught:
                exc = errors.as_fhir(caught)
                responses[i] = {"response": {"status": _status(exc.status), "outcome": exc.outcome()}}
                audit.append((entries[i]["request"], exc.status))
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": responses}, audit
