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


def reported_findings(top3: Sequence[Mapping[str, Any]], probabilities: Mapping[str, float],
                      thresholds: Mapping[str, float]) -> list[Finding]:
    """What a report states finding by finding (DICOM SR groups, HL7 OBX): the top three, as the FHIR
    Observations do, plus every other finding at or above its threshold, so no positive is dropped.
    Highest probability first."""
    out = {str(t["finding"]): Finding.from_dict(t) for t in top3}
    for name, p in probabilities.items():
        threshold = thresholds.get(name)
        if name not in out and threshold is not None and p >= threshold:
            out[name] = Finding(name, round(float(p), 4), round(float(threshold), 4), True)
    return sorted(out.values(), key=lambda f: -f.probability)
