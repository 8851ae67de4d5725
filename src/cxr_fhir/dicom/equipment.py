"""The model as the equipment that made an object (SOP Common, Contributing Equipment Sequence), as
IHE AI Results asks: which model, which version, which exact weights."""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
from pydicom import Dataset

from ..records.tables import Analysis
from . import codes as c


def contributing_equipment(analysis: Analysis) -> hd.ContributingEquipment:
    """The model as the equipment that made this object; the manifest hash (64 hex, an LO at its
    limit) as the device serial number, since it identifies the exact weights."""
    return hd.ContributingEquipment(
        manufacturer=c.MANUFACTURER, purpose_of_reference=c.PROCESSING_EQUIPMENT,
        manufacturer_model_name=analysis.model_name[:64],
        software_versions=[analysis.model_version[:64], c.SOFTWARE_VERSION],
        device_serial_number=analysis.manifest_sha256[:64],
        contribution_description="AI chest X-ray analysis (cxr-fhir)")


def stamp(ds: Dataset, when: datetime) -> None:
    """Content, creation and contribution times from the rows instead of highdicom's clock, so a retried
    delivery builds the same bytes as the first try."""
    day, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, clock
    if "ContentDate" in ds:  # not every IOD has them (a presentation state does not)
        ds.ContentDate, ds.ContentTime = day, clock
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = day + clock
