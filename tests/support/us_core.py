"""The US Core 3.1.1 DiagnosticReport Note profile's rules, checked by hand.

The profile's StructureDefinition (package hl7.fhir.us.core) is not reachable from our build
machines (only PyPI, npm and Debian are), so the medplum validator checks the R4 base and this
checks what the profile adds: the mandatory elements, the Radiology category from the US Core
DiagnosticReport category codes, a LOINC report code, a Patient subject, and that what we have
of the Must Support elements is filled in correctly.
"""

from __future__ import annotations

from typing import Any

PROFILE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-note"
US_CORE_DR_CATEGORIES = {"LP29684-5", "LP29708-2", "LP7839-6"}  # Radiology, Cardiology, Pathology (LOINC)
STATUSES = {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled",
            "entered-in-error", "unknown"}


def problems(dr: dict[str, Any]) -> list[str]:
    found = []
    if PROFILE not in dr.get("meta", {}).get("profile", []):
        found.append("meta.profile does not claim the profile")
    if dr.get("status") not in STATUSES:
        found.append("status missing or not a DiagnosticReport status")
    codings = [c for cat in dr.get("category", []) for c in cat.get("coding", [])]
    if not any(c.get("system") == "http://loinc.org" and c.get("code") in US_CORE_DR_CATEGORIES for c in codings):
        found.append("category needs a US Core DiagnosticReport category code (LOINC)")
    if not any(c.get("system") == "http://loinc.org" and c.get("code") for c in dr.get("code", {}).get("coding", [])):
        found.append("code needs a LOINC coding")
    if not str(dr.get("subject", {}).get("reference", "")).startswith(("Patient/", "urn:uuid:")):
        found.append("subject must reference a Patient")
    if "effectiveDateTime" not in dr and "effectivePeriod" not in dr:
        found.append("effective[x] is required")
    if "issued" not in dr:
        found.append("issued (Must Support) is known and missing")
    for form in dr.get("presentedForm", []):
        if "contentType" not in form or not ("data" in form or "url" in form):
            found.append("presentedForm needs contentType and data or url")
    if any("Device/" in str(p.get("reference", "")) for p in dr.get("performer", [])):
        found.append("performer may not be a Device")
    return found
