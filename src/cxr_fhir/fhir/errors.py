"""The one FHIR error type: anything the API refuses becomes an OperationOutcome with its status."""

from __future__ import annotations

from typing import Any


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
