"""The EHR destination: the report as one FHIR transaction Bundle, POSTed to the EHR.

Exactly once in effect: every Bundle entry is conditional on a business identifier (fhir/bundles.py),
so a retry after a lost answer changes nothing in the EHR.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from ..domain.vocabulary import Destination
from ..fhir import mapping
from ..fhir.bundles import ehr_transaction
from ..records.tables import OutboxDelivery
from ..storage.image_store import ImageStore
from .ehr_client import EhrClient
from .rows import report_rows
from .sender import Sent


class EhrSender:
    destination = Destination.EHR
    payload_name = "bundle"

    def __init__(self, client: EhrClient):
        self.client = client

    def prepare(self, s: Session, images: ImageStore, row: OutboxDelivery) -> dict[str, Any]:
        return build_bundle(s, images, row.report_id)

    def send(self, payload: dict[str, Any]) -> Sent:
        result = self.client.transaction(payload)
        return Sent({"http_status": result.status, "entries": result.entries}, result.status)

    def close(self) -> None:
        self.client.close()


def build_bundle(s: Session, images: ImageStore, report_id: str) -> dict[str, Any]:
    """The report as it is now (the newest version), with everything it refers to. Deleted rows
    are included: a deleted study's report goes out as cancelled."""
    rows = report_rows(s, report_id)
    overlay = None
    if rows.analysis.top3:
        digest = rows.analysis.overlays.get(rows.analysis.top3[0]["finding"])
        if digest:
            overlay = images.get(digest)
    return mapping.to_wire(ehr_transaction(rows.patient, rows.study, rows.analysis, rows.report, overlay))
