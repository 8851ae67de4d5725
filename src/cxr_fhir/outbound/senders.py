"""The senders for the destinations configured here: what `cxr-fhir worker` and `serve` run."""

from __future__ import annotations

from ..domain.vocabulary import Destination
from ..services.models import not_for_diagnostic_use
from ..settings import Settings
from .ehr import EhrSender
from .ehr_client import EhrClient
from .sender import Sender


def build_senders(settings: Settings) -> dict[Destination, Sender]:
    """One sender per configured destination (settings.destinations): the EHR when CXR_EHR_BASE_URL
    is set, the PACS when its AE title/host/port or STOW-RS URL is, the RIS when its MLLP address is.
    Empty when none is: there is then nothing for a worker to do."""
    senders: dict[Destination, Sender] = {}
    wanted = set(settings.destinations)
    if Destination.EHR in wanted:
        senders[Destination.EHR] = EhrSender(EhrClient.from_settings(settings))
    if Destination.PACS in wanted:
        from .pacs import PacsSender  # pynetdicom and highdicom load only where a PACS is configured

        senders[Destination.PACS] = PacsSender.from_settings(
            settings, not_for_diagnostic_use=not_for_diagnostic_use(settings.weights_dir))
    if Destination.RIS in wanted:
        from .ris import RisSender

        senders[Destination.RIS] = RisSender.from_settings(settings)
    return senders
