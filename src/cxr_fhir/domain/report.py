"""Report wording: the conclusion a doctor reads, in plain words."""

from __future__ import annotations

from .findings import BY_NAME

DISCLAIMER = "AI-generated preliminary result, not reviewed by a radiologist."


def conclusion(top3: list[dict], priority: str, reasons: list[str]) -> str:
    present = [t for t in top3 if t["present"]]
    if present:
        findings = "; ".join(f"{BY_NAME[t['finding']].display} (probability {t['probability']:.0%})" for t in present)
        head = f"Suggestive of: {findings}."
    else:
        best = top3[0]
        head = (f"No finding reaches its operating threshold; most likely "
                f"{BY_NAME[best['finding']].display.lower()} ({best['probability']:.0%}).")
    why = f" ({', '.join(reasons)})" if reasons else ""
    return f"{head} Triage priority: {priority.upper()}{why}. {DISCLAIMER}"
