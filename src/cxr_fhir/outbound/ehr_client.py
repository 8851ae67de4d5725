"""The EHR's FHIR endpoint as we use it: POST one transaction Bundle, classify the answer."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .ehr_auth import Auth, from_settings
from .errors import AuthError, PermanentError, TransientError

FHIR_JSON = "application/fhir+json"


@dataclass
class TransactionResult:
    status: int
    entries: list[dict[str, Any]]  # per bundle entry: status, and the EHR's Type/id when it gave one


class EhrClient:
    def __init__(self, base_url: str, auth: Auth, timeout_s: float = 30.0, verify: bool | str = True):
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.http = httpx.Client(timeout=timeout_s, verify=verify, follow_redirects=False,
                                 headers={"User-Agent": "cxr-fhir"})

    @classmethod
    def from_settings(cls, settings) -> EhrClient:
        verify: bool | str = str(settings.ehr_ca_bundle) if settings.ehr_ca_bundle else settings.ehr_verify_tls
        return cls(settings.ehr_base_url, from_settings(settings), settings.ehr_timeout_s, verify)

    def close(self) -> None:
        self.http.close()

    def transaction(self, bundle: dict[str, Any]) -> TransactionResult:
        """Raises TransientError (retry later), AuthError or PermanentError (dead-letter)."""
        response = self._post(bundle)
        if response.status_code == 401:
            # A cached token may have been revoked or the EHR restarted: one fresh token, one more try.
            self.auth.invalidate()
            response = self._post(bundle)
        status = response.status_code
        if 200 <= status < 300:
            return TransactionResult(status, _entries(_json(response)))
        outcome = _json(response)
        reason = f"HTTP {status}: {outcome_text(outcome) or response.reason_phrase}"
        if status in (401, 403):
            raise AuthError(reason, status, outcome)
        if status in (408, 429) or status >= 500:
            raise TransientError(reason, status, outcome, retry_after(response.headers.get("Retry-After")))
        raise PermanentError(reason, status, outcome)

    def _post(self, bundle: dict[str, Any]) -> httpx.Response:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **self.auth.header(self.http)}
        try:
            return self.http.post(self.base_url, json=bundle, headers=headers)
        except httpx.HTTPError as exc:
            # The exception text may echo the URL; the class name says enough (connect, read timeout...).
            raise TransientError(f"network error: {type(exc).__name__}") from exc


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def outcome_text(outcome: dict[str, Any] | None) -> str:
    """The human-readable part of an OperationOutcome."""
    if not outcome or outcome.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in outcome.get("issue", []):
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
        parts.append(f"{issue.get('severity', 'error')}: {text}")
    return "; ".join(parts)[:2000]


def _entries(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for entry in (bundle or {}).get("entry", []):
        response = entry.get("response") or {}
        item: dict[str, Any] = {"status": response.get("status", "")}
        resource = entry.get("resource") or {}
        if resource.get("resourceType") and resource.get("id"):
            item["id"] = f"{resource['resourceType']}/{resource['id']}"
        elif response.get("location"):
            item["id"] = "/".join(response["location"].split("/_history")[0].split("/")[-2:])
        out.append(item)
    return out


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdecimal():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
