"""How a delivery attempt failed decides what happens to it next."""

from __future__ import annotations


class DeliveryError(Exception):
    """An attempt failed. ``reason`` is shown to operators and stored; it never holds PHI of ours."""

    def __init__(self, reason: str, status: int | None = None, outcome: dict | None = None,
                 response: dict | None = None):
        super().__init__(reason)
        self.reason, self.status, self.outcome = reason, status, outcome
        # The destination's answer to store with the attempt (a DIMSE status, an HL7 ACK); the EHR
        # client gives ``outcome`` (an OperationOutcome) instead.
        self.response = response


class TransientError(DeliveryError):
    """Network error, timeout, 408, 429 or 5xx, a busy PACS, an HL7 AR: the same payload may well
    succeed later."""

    def __init__(self, reason: str, status: int | None = None, outcome: dict | None = None,
                 retry_after_s: float | None = None, response: dict | None = None):
        super().__init__(reason, status, outcome, response)
        self.retry_after_s = retry_after_s


class AuthError(TransientError):
    """We could not authenticate (token endpoint refused, 401/403). The fix is in configuration or
    at the EHR, not in the report, so the delivery is retried with back-off rather than dead-lettered
    at once: fixing the key must not require re-queuing every report by hand."""


class PermanentError(DeliveryError):
    """The destination refused this payload (an EHR 4xx other than 401/403/408/429, a DICOM failure
    status, an HL7 AE): sending it again cannot help."""
