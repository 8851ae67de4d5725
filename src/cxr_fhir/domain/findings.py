"""The one place that knows the 14 NIH ChestX-ray14 findings and their codes."""

from __future__ import annotations

from dataclasses import dataclass

SNOMED = "http://snomed.info/sct"
LOCAL_SYSTEM = "urn:cxr-fhir:finding"


@dataclass(frozen=True)
class Finding:
    name: str          # NIH label, also our local code
    display: str
    snomed: str | None  # None where no verified SNOMED CT concept is known

    @property
    def local_code(self) -> str:
        return self.name


FINDINGS: tuple[Finding, ...] = (
    Finding("Atelectasis", "Atelectasis", "46621007"),
    Finding("Cardiomegaly", "Cardiomegaly", "8186001"),
    Finding("Consolidation", "Consolidation", "95436008"),
    Finding("Edema", "Pulmonary edema", "19242006"),
    Finding("Effusion", "Pleural effusion", "60046008"),
    Finding("Emphysema", "Emphysema", "87433001"),
    Finding("Fibrosis", "Pulmonary fibrosis", "51615001"),
    Finding("Hernia", "Hiatal hernia", "84089009"),
    Finding("Infiltration", "Pulmonary infiltrate", "409609008"),
    Finding("Mass", "Mass of lung", "309529002"),
    Finding("Nodule", "Lung nodule", "786838002"),
    # No verified SNOMED CT concept for pleural thickening here: the local code stands alone.
    Finding("Pleural_Thickening", "Pleural thickening", None),
    Finding("Pneumonia", "Pneumonia", "233604007"),
    Finding("Pneumothorax", "Pneumothorax", "36118008"),
)

FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in FINDINGS)
BY_NAME: dict[str, Finding] = {f.name: f for f in FINDINGS}

# Names used by other box sources, mapped to ours (ChestX-Det writes "Pleural Thickening", NIH "Infiltrate").
ALIASES: dict[str, str] = {"Pleural Thickening": "Pleural_Thickening", "Infiltrate": "Infiltration"}


def canonical(name: str) -> str | None:
    """Our finding name for a source's label, or None when it is not one of the 14."""
    name = ALIASES.get(name.strip(), name.strip())
    return name if name in BY_NAME else None
