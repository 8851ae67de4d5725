"""The EHR delivery status of a DiagnosticReport, added when it is served.

It changes with every delivery attempt while the report itself does not, so it is not part of
the stored version (its ETag stays the report's); it is read from the outbox at serving time,
for a whole page of reports in one query.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from ...domain.vocabulary import Destination
from ...fhir.mapping import EHR_DELIVERY_STATUS_URL, FHIR_CODE
from ...records.tables import OutboxDelivery


def newest_statuses(s: Session, report_ids: Iterable[str]) -> dict[str, str]:
    """The outbox status (pending | delivered | dead) of the newest delivery of each report, in one
    query; a report never queued (push off) is absent. Newest: the highest report version, then the
    latest queued."""
    ids = sorted(set(report_ids))
    if not ids:
        return {}
    rank = func.row_number().over(partition_by=col(OutboxDelivery.report_id),
                                  order_by=(col(OutboxDelivery.report_version).desc(),
                                            col(OutboxDelivery.created_at).desc())).label("newest_rank")
    ranked = (select(col(OutboxDelivery.report_id), col(OutboxDelivery.status), rank)
              .where(col(OutboxDelivery.report_id).in_(ids),
                     col(OutboxDelivery.destination) == Destination.EHR).subquery())  # the EHR's only
    return dict(s.execute(select(ranked.c.report_id, ranked.c.status).where(ranked.c.newest_rank == 1)).all())


def add_status(content: dict[str, Any], statuses: dict[str, str]) -> dict[str, Any]:
    """The resource as served: a DiagnosticReport with its delivery status extension (from
    ``newest_statuses``); anything else unchanged."""
    if content.get("resourceType") != "DiagnosticReport" or content.get("id") not in statuses:
        return content
    others = [e for e in content.get("extension", []) if e.get("url") != EHR_DELIVERY_STATUS_URL]
    code = FHIR_CODE[statuses[content["id"]]]
    return {**content, "extension": [*others, {"url": EHR_DELIVERY_STATUS_URL, "valueCode": code}]}


def with_delivery_status(s: Session, content: dict[str, Any]) -> dict[str, Any]:
    """One resource as served (a read)."""
    if content.get("resourceType") != "DiagnosticReport":
        return content
    return add_status(content, newest_statuses(s, [content["id"]]))

