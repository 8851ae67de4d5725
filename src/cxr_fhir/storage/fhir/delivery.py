"""The EHR delivery status of a DiagnosticReport, added when it is served.

It changes with every delivery attempt while the report itself does not, so it is not part of
the stored version (its ETag stays the report's); it is read from the outbox at serving time.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from ...services.outbox import FHIR_CODE, newest
from ...fhir.mapping import EHR_DELIVERY_STATUS_URL


def with_delivery_status(s: Session, content: dict[str, Any]) -> dict[str, Any]:
    if content.get("resourceType") != "DiagnosticReport":
        return content
    row = newest(s, content["id"])
    if row is None:
        return content
    others = [e for e in content.get("extension", []) if e.get("url") != EHR_DELIVERY_STATUS_URL]
    return {**content, "extension": [*others, {"url": EHR_DELIVERY_STATUS_URL, "valueCode": FHIR_CODE[row.status]}]}
