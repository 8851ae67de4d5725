"""Triage priority from findings, by rules held in triage_rules.json (data, not code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RULES_FILE = Path(__file__).with_name("triage_rules.json")


@dataclass(frozen=True)
class Triage:
    priority: str          # routine | urgent | stat (FHIR request-priority codes)
    reasons: list[str]


def load_rules(path: Path = RULES_FILE) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def triage(probabilities: dict[str, float], thresholds: dict[str, float], boxes: list[dict],
           image_area: float, rules: dict[str, Any] | None = None) -> Triage:
    rules = rules or load_rules()
    order = rules["priorities"]
    best, reasons = rules["default"], []
    for rule in rules["rules"]:
        name = rule["finding"]
        p = probabilities.get(name, 0.0)
        if p < thresholds.get(name, 0.5) or p < rule.get("min_probability", 0.0):
            continue
        if "min_box_area" in rule:
            areas = [(b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) / image_area for b in boxes if b["finding"] == name]
            if not areas or max(areas) < rule["min_box_area"]:
                continue
        rank = order.index(rule["priority"])
        if rank > order.index(best):
            best, reasons = rule["priority"], [rule["why"]]
        elif rank == order.index(best) and rank > 0:
            reasons.append(rule["why"])
    return Triage(priority=best, reasons=reasons)
