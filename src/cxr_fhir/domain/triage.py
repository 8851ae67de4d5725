"""Triage priority from findings, by rules held in triage_rules.json (data, not code)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .analysis import Box

RULES_FILE = Path(__file__).with_name("triage_rules.json")


@dataclass(frozen=True)
class Triage:
    priority: str          # routine | urgent | stat (FHIR request-priority codes)
    reasons: list[str]


def load_rules(path: Path = RULES_FILE) -> dict[str, Any]:
    rules: dict[str, Any] = json.loads(Path(path).read_text())
    return rules


@lru_cache(maxsize=1)
def default_rules() -> dict[str, Any]:
    """The shipped rules, read once per process (callers must not modify the dict)."""
    return load_rules()


def _finding_and_area(box: Box | Mapping[str, Any]) -> tuple[str, float]:
    """A box's finding and area in pixels; stored boxes (dicts) and typed ones alike."""
    if isinstance(box, Box):
        return box.finding, box.area
    return str(box["finding"]), (float(box["x2"]) - float(box["x1"])) * (float(box["y2"]) - float(box["y1"]))


def triage(probabilities: Mapping[str, float], thresholds: Mapping[str, float],
           boxes: Iterable[Box | Mapping[str, Any]], image_area: float,
           rules: Mapping[str, Any] | None = None) -> Triage:
    rules = rules or default_rules()
    order: list[str] = rules["priorities"]
    best: str = rules["default"]
    reasons: list[str] = []
    sized = [_finding_and_area(b) for b in boxes]
    for rule in rules["rules"]:
        name = rule["finding"]
        p = probabilities.get(name, 0.0)
        if p < thresholds.get(name, 0.5) or p < rule.get("min_probability", 0.0):
            continue
        if "min_box_area" in rule:
            areas = [area / image_area for finding, area in sized if finding == name]
            if not areas or max(areas) < rule["min_box_area"]:
                continue
        rank = order.index(rule["priority"])
        if rank > order.index(best):
            best, reasons = rule["priority"], [rule["why"]]
        elif rank == order.index(best) and rank > 0:
            reasons.append(rule["why"])
    return Triage(priority=best, reasons=reasons)
