"""Report wording: the conclusion a doctor reads, in plain words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .analysis import Finding
from .findings import BY_NAME

DISCLAIMER = "AI-generated preliminary result, not reviewed by a radiologist."
UNUSUAL_FILM = ("Unusual film, read with care: this image is atypical for a chest radiograph "
                "(e.g. portable film with lines and tubes, wide borders, unusual exposure); "
                "the AI result is less reliable.")


def _scored(item: Finding | Mapping[str, Any]) -> tuple[str, float, bool]:
    """(finding, probability, present) of a typed top-3 entry or its stored dict."""
    if isinstance(item, Finding):
        return item.finding, item.probability, item.present
    return str(item["finding"]), float(item["probability"]), bool(item["present"])


def conclusion(top3: Sequence[Finding | Mapping[str, Any]], priority: str, reasons: Sequence[str],
               unusual_film: bool = False) -> str:
    scored = [_scored(t) for t in top3]
    present = [(name, p) for name, p, is_present in scored if is_present]
    if present:
        findings = "; ".join(f"{BY_NAME[name].display} (probability {p:.0%})" for name, p in present)
        head = f"Suggestive of: {findings}."
    else:
        name, p, _ = scored[0]
        head = (f"No finding reaches its operating threshold; most likely "
                f"{BY_NAME[name].display.lower()} ({p:.0%}).")
    why = f" ({', '.join(reasons)})" if reasons else ""
    caution = f"{UNUSUAL_FILM} " if unusual_film else ""
    return f"{caution}{head} Triage priority: {priority.upper()}{why}. {DISCLAIMER}"
