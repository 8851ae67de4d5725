"""Authentication to the EHR: none, a static bearer token, or SMART Backend Services.

SMART Backend Services: we sign a short-lived JWT (RS384) with our private key, exchange it at the
EHR's token endpoint for an access token (client_credentials grant) and reuse that token until
shortly before it expires.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import jwt

from .errors import AuthError, TransientError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240  # SMART allows at most 5 minutes; stay under it despite clock skew
REFRESH_MARGIN_S = 60  # renew the access token this long before it expires


class Auth:
    """No authentication."""

    def header(self, http: httpx.Client) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        """Forget any cached credential (after a 401)."""


class BearerAuth(Auth):
    def __init__(self, token: str):
        if not token:
            raise ValueError("CXR_EHR_AUTH=bearer needs CXR_EHR_TOKEN")
        self._token = token

    def header(self, http: httpx.Client) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}


class SmartBackendAuth(Auth):
    def __init__(self, base_url: str, client_id: str, private_key_path: Path, scope: str,
                 token_url: str | None = None, key_id: str | None = None):
        if not client_id or not private_key_path:
            raise ValueError("CXR_EHR_AUTH=smart needs CXR_EHR_CLIENT_ID and CXR_EHR_PRIVATE_KEY_PATH")
        self.base_url, self.client_id, self.scope = base_url.rstrip("/"), client_id, scope
        self.private_key_path, self.key_id, self._token_url = Path(private_key_path), key_id, token_url
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def header(self, http: httpx.Client) -> dict[str, str]:
        with self._lock:  # one token request at a time, shared by every delivery
            if self._token is None or time.time() >= self._expires_at:
                self._token, self._expires_at = self._fetch(http)
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def token_url(self, http: httpx.Client) -> str:
        if self._token_url is None:
            url = f"{self.base_url}/.well-known/smart-configuration"
            try:
                r = http.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError as exc:
                raise TransientError(f"SMART discovery failed: {type(exc).__name__}") from exc
            if r.status_code != 200:
                raise AuthError(f"SMART discovery: {url} answered HTTP {r.status_code}", r.status_code)
            try:
                self._token_url = r.json()["token_endpoint"]
            except (ValueError, KeyError) as exc:
                raise AuthError("SMART discovery: no token_endpoint in smart-configuration") from exc
        return self._token_url

    def assertion(self, audience: str) -> str:
        try:
            key = self.private_key_path.read_bytes()
        except OSError as exc:
            raise AuthError(f"cannot read the SMART private key: {exc.strerror}") from exc
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": audience, "jti": uuid.uuid4().hex,
                  "iat": now, "exp": now + ASSERTION_LIFETIME_S}
        headers = {"typ": "JWT", **({"kid": self.key_id} if self.key_id else {})}
        try:
            return jwt.encode(claims, key, algorithm="RS384", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise AuthError(f"cannot sign the SMART client assertion: {exc}") from exc

    def _fetch(self, http: httpx.Client) -> tuple[str, float]:
        url = self.token_url(http)
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion(url)}
        try:
            r = http.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TransientError(f"SMART token request failed: {type(exc).__name__}") from exc
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code != 200 or "access_token" not in body:
            error = body.get("error", "no access_token")
            detail = body.get("error_description", "")
            reason = f"SMART token endpoint refused (HTTP {r.status_code}): {error}" + (f": {detail}" if detail else "")
            if r.status_code >= 500 or r.status_code == 429:
                raise TransientError(reason, r.status_code)
            raise AuthError(reason, r.status_code)
        lifetime = float(body.get("expires_in") or 300)
        # Renew a little early, so a token never expires between our check and the EHR's.
        return body["access_token"], time.time() + lifetime - min(REFRESH_MARGIN_S, lifetime / 10)


def from_settings(settings) -> Auth:
    if settings.ehr_auth == "bearer":
        return BearerAuth(settings.ehr_token or "")
    if settings.ehr_auth == "smart":
        return SmartBackendAuth(settings.ehr_base_url, settings.ehr_client_id or "", settings.ehr_private_key_path,
                                settings.ehr_scope, settings.ehr_token_url, settings.ehr_key_id)
    return Auth()
