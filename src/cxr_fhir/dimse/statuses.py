"""C-STORE answers for the domain's refusals: the status from the one refusal table that every
DICOM adapter shares (imaging/dicom_status.py, the same numbers STOW-RS answers as FailureReason),
and the reason as ErrorComment.

Every failure carries the reason in ErrorComment (LO: at most 64 characters). A resend of an
instance already filed is a success (0x0000): idempotent on SOPInstanceUID.
"""

from __future__ import annotations

from ..domain.errors import CxrError, Invalid, InvalidRequest, TooCostly, Unavailable
from ..imaging import dicom_status
from ..imaging.errors import ImageRejected

SUCCESS = 0x0000
OUT_OF_RESOURCES = dicom_status.OUT_OF_RESOURCES
TOO_LARGE = dicom_status.INSTANCE_TOO_LARGE
PROCESSING_FAILURE = dicom_status.PROCESSING_FAILURE

MAX_COMMENT = 64  # ErrorComment is LO


def comment(text: str) -> str:
    """The reason as ErrorComment can hold it: one line, at most 64 characters, ASCII."""
    flat = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return flat if len(flat) <= MAX_COMMENT else flat[: MAX_COMMENT - 3] + "..."


def for_refusal(exc: CxrError) -> tuple[int, str]:
    """(status, short code) for a refusal the services raised."""
    if isinstance(exc, ImageRejected):
        return dicom_status.refusal_status(exc.code), exc.code
    if isinstance(exc, Unavailable | TooCostly):  # a full queue, a slow database: send again later
        return dicom_status.refusal_status("busy"), "busy"
    if isinstance(exc, InvalidRequest | Invalid):
        return dicom_status.refusal_status("invalid-header"), "invalid-header"
    return dicom_status.CANNOT_UNDERSTAND, type(exc).__name__
