"""Who may associate: the configured calling AE titles, each optionally pinned to an address."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    ae_title: str
    address: str | None = None  # None: from any address


def parse_callers(text: str) -> tuple[Caller, ...]:
    """``"MODALITY1, ORTHANC@127.0.0.1"`` -> the allowed callers. Empty: nobody (a listener
    nobody was told to trust accepts no association)."""
    callers = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        title, _, address = item.partition("@")
        if not title.strip() or len(title.strip()) > 16:
            raise ValueError(f"bad calling AE title in dicom_allowed_callers: {title!r} (1 to 16 characters)")
        callers.append(Caller(title.strip(), address.strip() or None))
    return tuple(callers)


def is_allowed(callers: tuple[Caller, ...], ae_title: str, address: str | None) -> bool:
    """AE titles compare without their padding spaces, as the standard pads them."""
    title = ae_title.strip()
    return any(c.ae_title == title and (c.address is None or c.address == address) for c in callers)
