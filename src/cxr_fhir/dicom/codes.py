"""The coded concepts our DICOM objects use, in one place (the findings' own codes come from
``domain.findings``, the one catalogue)."""

from __future__ import annotations

from importlib import metadata

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from ..domain.findings import BY_NAME

MANUFACTURER = "cxr-fhir"
# Private coding scheme (PS3.3 8.2: designators starting "99" are local) for the findings that have
# no SNOMED CT code, and the few concepts no standard vocabulary names.
LOCAL_SCHEME = "99CXRFHIR"

# The procedure, as the FHIR DiagnosticReport.code names it (fhir/mapping.py), so SR and FHIR agree.
CHEST_XRAY = hd.sr.CodedConcept("36554-4", "LN", "XR Chest Single view")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
THRESHOLD = hd.sr.CodedConcept("122411", "DCM", "Threshold Value")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
CONCLUSION = hd.sr.CodedConcept("121077", "DCM", "Conclusion")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
DEVICE = codes.DCM.Device
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
UNUSUAL_FILM = hd.sr.CodedConcept("unusual-film", LOCAL_SCHEME, "Unusual film, read with care")
PRIORITY = hd.sr.CodedConcept("priority", LOCAL_SCHEME, "AI triage priority")


def local_scheme() -> Dataset:
    """The Coding Scheme Identification item that declares our private scheme (PS3.3 C.12.1)."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "cxr-fhir local codes"
    item.CodingSchemeResponsibleOrganization = "cxr-fhir project"
    return item


def finding_concept(name: str) -> hd.sr.CodedConcept:
    """A finding by its SNOMED CT code, or by our local code where it has none."""
    finding = BY_NAME[name]
    if finding.snomed:
        return hd.sr.CodedConcept(finding.snomed, "SCT", finding.display)
    return hd.sr.CodedConcept(finding.local_code, LOCAL_SCHEME, finding.display)


def _software_version() -> str:
    try:
        return metadata.version("cxr-fhir")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0"


SOFTWARE_VERSION = _software_version()
