"""What the administrator is shown about the models: the card, the manifest on disk and what is in
force (the loaded models' thresholds, else the manifest's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..domain.analysis import ModelInfo
from ..inference.registry import read_manifest

if TYPE_CHECKING:  # the models load only where they run, not wherever this module is imported
    from ..inference.pipeline import Pipeline


@dataclass(frozen=True)
class ModelOverview:
    card: str
    classifier: dict[str, Any]
    detector: dict[str, Any] | None
    thresholds: dict[str, float]
    manifest_error: str | None
    loaded: ModelInfo | None


def overview(weights_dir: Path, pipeline: Pipeline | None) -> ModelOverview:
    card_path = weights_dir / "MODEL_CARD.md"
    card = card_path.read_text() if card_path.exists() else "(weights/MODEL_CARD.md is missing)"
    error = None
    try:
        manifest = read_manifest(weights_dir)
    except Exception as exc:  # shown, not raised: the page explains what is wrong
        manifest, error = {}, str(exc)
    classifier: dict[str, Any] = manifest.get("classifier", {})
    thresholds = pipeline.thresholds if pipeline is not None else dict(classifier.get("thresholds", {}))
    return ModelOverview(card=card, classifier=classifier, detector=manifest.get("detector"), thresholds=thresholds,
                         manifest_error=error, loaded=pipeline.model_info if pipeline is not None else None)


def not_for_diagnostic_use(weights_dir: Path) -> bool:
    """Whether objects sent to a PACS must say "not for diagnostic use". Only a manifest that says
    ``"diagnostic_use": true`` (weights cleared for diagnosis) lifts it; the shipped weights' card says
    "Not a medical device. Not for clinical use", and a missing or unreadable manifest is no clearance."""
    try:
        return read_manifest(weights_dir).get("diagnostic_use") is not True
    except Exception:  # no manifest: nothing says these weights may be used for diagnosis
        return True
