"""Deterministic DICOM UIDs: the same report version always gets the same UIDs, so a retried
delivery overwrites (or is ignored as) the object already sent instead of making a second one.

UUID-derived UIDs ("2.25." + the UUID as an integer, PS3.5 B.2) need no registered root and stay
within the 64 characters a UI allows (at most 44 here).
"""

from __future__ import annotations

import uuid

# Our namespace for uuid5: fixed forever, since changing it would change every UID we ever emitted.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-fhir:dicom")

KINDS = frozenset({"sr", "sr-series", "sc", "sc-series", "pr", "pr-series"})


def uuid_uid(name: str) -> str:
    """The 2.25 UID of uuid5(NAMESPACE, name)."""
    return f"2.25.{uuid.uuid5(NAMESPACE, name).int}"


def object_uid(report_id: str, report_version: int, kind: str) -> str:
    """The UID of one object (or series) we emit for a report version.

    Series UIDs are asked for with ``report_version=0`` by the builders, so every version of a
    report lands in one series (a PACS shows the versions side by side, newest last).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown UID kind {kind!r}")
    if report_version < 0:
        raise ValueError("report_version must be >= 0")
    return uuid_uid(f"{report_id}/{report_version}/{kind}")


def tracking_uid(analysis_id: str, finding: str) -> str:
    """The tracking UID of one finding of one analysis: the same in every version of its report, so
    a viewer can follow the finding from the preliminary to the verified SR."""
    return uuid_uid(f"{analysis_id}/{finding}/tracking")
