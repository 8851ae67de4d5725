"""The patient registry: validation by field, and one living patient per MRN even under a race."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from sqlmodel import Session, func, select

from cxr_fhir.records.tables import Patient
from cxr_fhir.services.patients import PatientInput, PatientInvalid, PatientService
from cxr_fhir.storage.db import writing

SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"


def test_every_wrong_field_is_named(engine):
    svc = PatientService(SYSTEM)
    with pytest.raises(PatientInvalid) as bad, writing(engine) as s:
        svc.register(s, PatientInput(family=" ", given="A\x1bB", sex="robot", birth_date=date(2999, 1, 1),
                                  triage_level=9), actor="t")
    assert set(bad.value.errors) == {"family", "given", "sex", "birth_date", "triage_level"}
    with writing(engine) as s:
        ok = svc.register(s, PatientInput(family="Nguyễn", given="Thị Minh 🌸", mrn="M-1"), actor="t")
    assert (ok.family, ok.given, ok.mrn_system) == ("Nguyễn", "Thị Minh 🌸", SYSTEM)


def test_mrn_is_unique_among_living_patients_even_when_registered_at_once(engine):
    svc = PatientService(SYSTEM)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def register(i: int) -> None:
        barrier.wait()
        try:
            with writing(engine) as s:
                svc.register(s, PatientInput(family=f"Race{i}", mrn="DUP-1"), actor="t")
            outcomes.append("ok")
        except PatientInvalid as exc:
            outcomes.append(exc.errors["mrn"])
        except Exception as exc:  # a lock timeout would show here
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["already registered to another patient"] * 3 + ["ok"]
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Patient).where(Patient.mrn == "DUP-1")).one() == 1
        first = s.exec(select(Patient).where(Patient.mrn == "DUP-1")).one()
    with writing(engine) as s:
        svc.delete(s, first.id, actor="t")  # a deleted patient's MRN may be given to a new registration
    with writing(engine) as s:
        assert svc.register(s, PatientInput(family="Again", mrn="DUP-1"), actor="t").mrn == "DUP-1"
