"""What the outbox worker needs from a destination: build the payload, send it.

The worker owns claiming, ordering, retries and dead letters for every destination alike; a sender
only knows its protocol. ``prepare`` runs inside the claim's unit of work (it reads the rows it
needs and may read stored images); ``send`` runs outside any transaction (it may take as long as the
network does) and raises ``outbound.errors`` TransientError / AuthError / PermanentError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlmodel import Session

from ..domain.vocabulary import Destination
from ..records.tables import OutboxDelivery
from ..storage.image_store import ImageStore


@dataclass(frozen=True)
class Sent:
    """A successful attempt. ``summary`` (JSON-able) is stored in the row's ``ehr_response``;
    ``status`` is the protocol's status code for the log (HTTP status, DIMSE status), if any."""

    summary: dict[str, Any] = field(default_factory=dict)
    status: int | None = None


class Sender(Protocol):
    destination: Destination
    payload_name: str  # for the reason when the payload cannot be made: "cannot build the <payload_name>"

    def prepare(self, s: Session, images: ImageStore, row: OutboxDelivery) -> Any:
        """The payload for this row, read in the claim's unit of work. Raising here dead-letters the
        row: our own data that cannot make a payload will not make one on the next attempt either."""
        ...

    def send(self, payload: Any) -> Sent:
        """Deliver; raises TransientError (retry later), AuthError or PermanentError (dead letter)."""
        ...

    def close(self) -> None:
        """Release connections (the worker is stopping)."""
        ...
