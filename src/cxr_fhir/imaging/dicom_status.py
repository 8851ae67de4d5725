"""The one table from an image refusal to a DICOM failure status, for every DICOM adapter.

The same number answers a refused instance whether it came by DIMSE (the C-STORE response Status,
PS3.4 Table B.2-1 / PS3.7 Annex C) or by DICOMweb STOW-RS (FailureReason (0008,1197) in the
FailedSOPSequence, PS3.18 §10.5.3, which takes its values from the same C-STORE statuses), so a
PACS sees one answer for one film by either road. The human reason goes to the audit trail: the
standard has no free-text field for it in a STOW-RS response.
"""

from __future__ import annotations

# PS3.4 B.2.3 / PS3.7 C: the statuses a storage SCP may answer. Within a range (A7xx, A9xx, Cxxx)
# the low byte is ours to choose: it tells a PACS administrator which refusal it was.
OUT_OF_RESOURCES = 0xA700        # Refused: Out of Resources: busy now (queue full, store down), send again
# Over CXR_DICOM_MAX_INSTANCE_BYTES: an Error (Cxxx), not Out of Resources (A7xx), because a sender
# retries A7xx and the same instance would be refused again every time.
INSTANCE_TOO_LARGE = 0xC040
TOO_MANY_PIXELS = 0xA702         # Refused: Out of Resources: more pixels than CXR_MAX_IMAGE_PIXELS
DATASET_MISMATCH = 0xA900        # Error: Data Set does not match SOP Class (A9xx)
CANNOT_UNDERSTAND = 0xC000       # Error: Cannot understand (Cxxx); the refusals below are its sub-codes
CORRUPT = 0xC001                 # truncated or malformed: not readable as DICOM / its pixels
UNDECODABLE = 0xC002             # pixel data in a form we cannot decode
NOT_A_CHEST_FILM = 0xC010        # readable, but not a chest radiograph (a CT, a lateral, the gate)
NO_CONTENT = 0xC011              # blank, empty or too small to read
IDENTITY_CONFLICT = 0xC020       # a UID of another patient's study, or of another study than the request's
PATIENT_NOT_FILED = 0xC030       # no PatientID, or a patient that cannot be registered as sent
PROCESSING_FAILURE = 0x0110      # Failure: Processing failure (PS3.7 C.4.1): our fault
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported (PS3.7 C.5.4)
NOT_AUTHORIZED = 0x0124          # Refused: Not authorized (PS3.7 C.5.6)

# The storage SOP classes this node takes: a chest radiograph as CR, DX (for presentation and for
# processing) or a scanned film as Secondary Capture. Anything else is SOP_CLASS_NOT_SUPPORTED
# before a byte of it is decoded.
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPTED_SOP_CLASSES: frozenset[str] = frozenset({CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING,
                                                  SECONDARY_CAPTURE})

# Refusal code (ImageRejected.code, and the adapters' own codes) -> status. One DX/CR image is one
# monochrome frame with pixels: multi-frame, colour or no PixelData do not match the SOP class.
REFUSAL_STATUS: dict[str, int] = {
    "busy": OUT_OF_RESOURCES,  # services' Unavailable (Saturated among them): nothing stored, try later
    "instance-too-large": INSTANCE_TOO_LARGE,
    "too-large": TOO_MANY_PIXELS,
    "multi-frame": DATASET_MISMATCH,
    "not-an-image": DATASET_MISMATCH,
    "colour-photograph": DATASET_MISMATCH,
    "corrupt": CORRUPT,
    "unsupported-format": UNDECODABLE,
    "unsupported-media-type": CANNOT_UNDERSTAND,  # a STOW-RS part that is not application/dicom
    "not-a-chest-radiograph": NOT_A_CHEST_FILM,
    "blank": NO_CONTENT,
    "empty": NO_CONTENT,
    "too-small": NO_CONTENT,
    "uid-conflict": IDENTITY_CONFLICT,
    "study-uid-mismatch": DATASET_MISMATCH,  # STOW-RS to /studies/{uid}: PS3.18 §10.5 names A900 for it
    "invalid-header": PATIENT_NOT_FILED,  # the services' InvalidRequest / Invalid on the header's patient
    "sop-class-not-supported": SOP_CLASS_NOT_SUPPORTED,
    "processing-failure": PROCESSING_FAILURE,  # an unexpected fault of ours, logged
}


def refusal_status(code: str) -> int:
    """The DICOM failure status for a refusal code; a code not listed is a plain Cannot understand."""
    return REFUSAL_STATUS.get(code, CANNOT_UNDERSTAND)


def sop_class_supported(sop_class_uid: str | None) -> bool:
    return sop_class_uid in ACCEPTED_SOP_CLASSES
