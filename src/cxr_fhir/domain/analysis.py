"""The typed vocabulary of one analysis: scored findings, boxes and the model that made them.

The models' room produces these; triage, reports and storage read them. Storage and the FHIR
mapping keep the plain-dict shape (JSON columns): ``as_dict()`` gives exactly that shape, and
``from_dict()`` reads it back.

Not to be confused with ``domain.findings.Finding``, the catalogue entry (name, display, SNOMED
code) of one of the 14 findings: a ``Finding`` here is one finding *scored* on one image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

BoxSource = Literal["detector", "heatmap"]
BOX_SOURCES: tuple[BoxSource, ...] = ("detector", "heatmap")


@dataclass(frozen=True)
class Finding:
    """One finding scored on one image, against its operating threshold."""

    finding: str          # the catalogue name (domain.findings.FINDING_NAMES)
    probability: float    # calibrated, rounded to 4 places
    threshold: float      # the operating threshold, rounded to 4 places
    present: bool         # probability at or above the (unrounded) threshold

    def as_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "probability": self.probability, "threshold": self.threshold,
                "present": self.present}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(finding=str(d["finding"]), probability=float(d["probability"]),
                   threshold=float(d["threshold"]), present=bool(d["present"]))


@dataclass(frozen=True)
class Box:
    """A region of one finding, in the image's own pixel coordinates (x1, y1 top left)."""

    finding: str
    confidence: float     # detector confidence, or the finding's probability for a heatmap box
    source: BoxSource
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def as_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "confidence": self.confidence, "source": self.source,
                "x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Box:
        source = str(d["source"])
        if source not in BOX_SOURCES:
            raise ValueError(f"unknown box source {source!r}")
        return cls(finding=str(d["finding"]), confidence=float(d["confidence"]), source=source,
                   x1=float(d["x1"]), y1=float(d["y1"]), x2=float(d["x2"]), y2=float(d["y2"]))


@dataclass(frozen=True)
class ModelInfo:
    """Which models made a result: the classifier's name and version, and the manifest's hash."""

    name: str
    version: str
    manifest_sha256: str
    classifier: str            # the classifier's architecture
    detector: str | None       # the detector's architecture, None when there is no detector

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "manifest_sha256": self.manifest_sha256,
                "classifier": self.classifier, "detector": self.detector}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelInfo:
        detector = d.get("detector")
        return cls(name=str(d["name"]), version=str(d["version"]), manifest_sha256=str(d["manifest_sha256"]),
                   classifier=str(d["classifier"]), detector=None if detector is None else str(detector))


__all__ = ["BOX_SOURCES", "Box", "BoxSource", "Finding", "ModelInfo"]
