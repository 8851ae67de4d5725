"""The one error taxonomy. Every room raises these; none of them knows HTTP, FHIR or a page.

Each adapter (the FHIR API, the pages, the CLI) has one table from these classes to its own
answer (a status and an OperationOutcome, a message on the page, an exit status), looked up along
the exception's MRO so a subclass is answered as its nearest listed base.
"""

from __future__ import annotations


class CxrError(Exception):
    """Something the caller asked for cannot be done; ``message`` is written for people.

    ``where`` names the element(s) or field(s) at fault when there are any (a FHIRPath such as
    ``Patient.name.family``, or a form field), so an adapter can point at them."""

    def __init__(self, message: str, where: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.where = list(where or [])


class InvalidRequest(CxrError):
    """The request itself is malformed (a search value, a reference, a body of the wrong shape)."""


class NotFound(CxrError):
    """Nothing is stored under that identity."""


class Gone(CxrError):
    """It existed and was deleted."""


class VersionConflict(CxrError):
    """The caller's version is not the current one (optimistic locking, If-Match)."""

    def __init__(self, expected: int | None = None, actual: int | None = None, message: str | None = None):
        super().__init__(message or f"version conflict: expected version {expected}, current is {actual}")
        self.expected, self.actual = expected, actual


class Duplicate(CxrError):
    """It would make a second record of something that must be unique (an MRN, a UID)."""


class Invalid(CxrError):
    """The content breaks a rule of its own (a field too long, a code outside its value set).

    ``errors`` maps each field at fault to its message, so a form shows each next to its field."""

    def __init__(self, errors: dict[str, str] | str, where: list[str] | None = None):
        self.errors = errors if isinstance(errors, dict) else {}
        text = errors if isinstance(errors, str) else "; ".join(f"{k}: {v}" for k, v in errors.items())
        super().__init__(text, where or list(self.errors))


class BusinessRule(CxrError):
    """Well-formed, but the current state does not allow it (confirming a cancelled report)."""


class Refused(CxrError):
    """An input we will not take, with a stable machine-readable ``code`` (an image that is not a
    chest radiograph, a synthetic film) beside the reason for people."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class TooCostly(CxrError):
    """The request would take more than the server gives one request (a query past its time
    limit, too many search values): narrow it."""


class NotSupported(CxrError):
    """This server does not do that (a read-only type, an unknown resource type)."""


class Unavailable(CxrError):
    """A dependency cannot take the work now (the image store, the database, a full queue);
    nothing was half-written; ``retry_after_s`` says when trying again makes sense."""

    def __init__(self, message: str, retry_after_s: int = 30):
        super().__init__(message)
        self.retry_after_s = retry_after_s
