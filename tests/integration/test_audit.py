"""Audit rows on both databases, and their FHIR AuditEvent form validated as R4."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from cxr_fhir.fhir import mapping
from cxr_fhir.records.tables import AuditEvent
from cxr_fhir.security.audit import record
from cxr_fhir.storage.db import writing
from support.fhir_validator import validate


def test_events_are_recorded_and_valid_fhir(engine):
    with writing(engine) as s:
        record(s, action="R", subtype="read", agent_type="client", agent_id="ehr-bridge", entity_type="Patient",
               entity_id="p-1", source_ip="127.0.0.1")
        record(s, action="E", subtype="search-type", agent_type="user", agent_id="dr.a", entity_type="Patient",
               query="name=Doe&birthdate=ge1950")
        record(s, action="E", subtype="login", agent_type="user", agent_id="dr.b", outcome="4",
               source_ip="127.0.0.1", detail="wrong password")
        record(s, action="C", subtype="delivery", agent_type="system", agent_id=None, entity_type="DiagnosticReport",
               entity_id="r-1")
    with Session(engine) as s:
        order = ["read", "search-type", "login", "delivery"]
        rows = sorted(s.exec(select(AuditEvent)).all(), key=lambda r: order.index(r.subtype))
    assert [r.subtype for r in rows] == order
    wire = [mapping.to_wire(mapping.audit_event(r)) for r in rows]
    assert [v["issues"] for v in validate(wire)] == [[]] * 4
    assert wire[0]["entity"][0]["what"]["reference"] == "Patient/p-1"
    assert wire[2]["outcome"] == "4" and wire[2]["subtype"][0]["code"] == "110122"


def test_nonsense_is_refused(engine):
    with pytest.raises(ValueError):
        with writing(engine) as s:
            record(s, action="X", subtype="read", agent_type="user", agent_id="a")


def test_control_characters_of_every_kind_are_stored_escaped(engine):
    """C1 too: a query holding CSI (U+009B) must not reach an administrator's terminal raw."""
    with writing(engine) as s:
        record(s, action="E", subtype="search-type", agent_type="client", agent_id="x\x9b2J",
               query="name=\x1b[31mred\x85&family=\x9b2J", detail="nul\x00here")
    with Session(engine) as s:
        row = s.exec(select(AuditEvent).where(AuditEvent.subtype == "search-type")).one()
    assert row.query == "name=\\x1b[31mred\\x85&family=\\x9b2J"
    assert (row.agent_id, row.detail) == ("x\\x9b2J", "nul\\x00here")
