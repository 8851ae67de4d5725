"""The FHIR adapter's errors: its own (401, 403, 406, 415 ...) and the one table that answers the
domain's error taxonomy, each as an OperationOutcome with its status."""

from __future__ import annotations

from typing import Any

from ...domain.errors import (
    BusinessRule,
    CxrError,
    Duplicate,
    Gone,
    Invalid,
    InvalidRequest,
    NotFound,
    NotSupported,
    Refused,
    TooCostly,
    Unavailable,
    VersionConflict,
)


class FhirError(Exception):
    def __init__(self, status: int, diagnostics: str, code: str = "invalid", expression: list[str] | None = None,
                 headers: dict[str, str] | None = None, issues: list[dict[str, Any]] | None = None):
        super().__init__(diagnostics)
        self.status, self.diagnostics, self.code = status, diagnostics, code
        self.expression, self.headers = expression, headers or {}
        self.extra_issues = issues or []

    def outcome(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": "error" if self.status < 500 else "fatal", "code": self.code,
                                 "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return {"resourceType": "OperationOutcome", "issue": [issue, *self.extra_issues]}


def outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code,
                                                           "diagnostics": diagnostics}]}


def bad_request(diagnostics: str, expression: list[str] | None = None) -> FhirError:
    return FhirError(400, diagnostics, "invalid", expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, diagnostics, "not-found")


def gone(diagnostics: str) -> FhirError:
    return FhirError(410, diagnostics, "deleted")


def conflict(diagnostics: str) -> FhirError:
    return FhirError(409, diagnostics, "conflict")


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError(412, diagnostics, "conflict")


def unprocessable(diagnostics: str, expression: list[str] | None = None) -> FhirError:
    return FhirError(422, diagnostics, "processing", expression)


# The FHIR API's one table from the error taxonomy to an HTTP status and an issue code; looked up
# along the exception's MRO, so DuplicateMrn (Duplicate, Invalid) answers as a Duplicate.
DOMAIN_STATUS: dict[type[CxrError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid"),
    TooCostly: (400, "too-costly"),
    NotFound: (404, "not-found"),
    Gone: (410, "deleted"),
    VersionConflict: (412, "conflict"),
    Duplicate: (409, "duplicate"),
    Invalid: (422, "processing"),
    BusinessRule: (422, "business-rule"),
    Refused: (422, "invalid"),
    NotSupported: (405, "not-supported"),
    Unavailable: (503, "transient"),
}


def from_domain(exc: CxrError) -> FhirError:
    """The OperationOutcome answer for a domain error (every field at fault as an issue of its own)."""
    status, code = next(DOMAIN_STATUS[k] for k in type(exc).__mro__ if k in DOMAIN_STATUS)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
    message = exc.message
    if isinstance(exc, Refused):
        message = f"image refused ({exc.code}): {exc.reason}"
    if isinstance(exc, Invalid) and exc.errors:
        (first, text), *rest = exc.errors.items()
        message = f"{first}: {text}"
        extra = [{"severity": "error", "code": code, "diagnostics": f"{k}: {v}",
                  **({"expression": [exc.where[i + 1]]} if len(exc.where) > i + 1 else {})}
                 for i, (k, v) in enumerate(rest)]
        return FhirError(status, message, code, exc.where[:1] or None, headers, extra)
    return FhirError(status, message, code, exc.where or None, headers)


def as_fhir(exc: FhirError | CxrError) -> FhirError:
    return exc if isinstance(exc, FhirError) else from_domain(exc)
