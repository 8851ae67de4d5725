"""SMART client assertion, back-off and Retry-After, without a network."""

from __future__ import annotations

import time
from email.utils import formatdate

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cxr_fhir.outbound.ehr_auth import ASSERTION_TYPE, BearerAuth, SmartBackendAuth, from_settings
from cxr_fhir.outbound.ehr_client import outcome_text, retry_after
from cxr_fhir.outbound.errors import AuthError
from cxr_fhir.outbound.worker import Policy
from cxr_fhir.settings import Settings


@pytest.fixture
def key_pair(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key.public_key()


def test_client_assertion_is_what_smart_backend_services_asks(key_pair):
    path, public = key_pair
    auth = SmartBackendAuth("https://ehr/fhir", "cxr-fhir", path, "system/*.write", key_id="k1")
    token = auth.assertion("https://ehr/auth/token")
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"], header["typ"]) == ("RS384", "k1", "JWT")
    claims = jwt.decode(token, public, algorithms=["RS384"], audience="https://ehr/auth/token")
    assert claims["iss"] == claims["sub"] == "cxr-fhir"
    assert 0 < claims["exp"] - time.time() <= 300 and claims["exp"] - claims["iat"] <= 300
    other = jwt.decode(auth.assertion("https://ehr/auth/token"), options={"verify_signature": False})
    assert claims["jti"] != other["jti"]
    assert ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_unreadable_or_wrong_key_is_an_auth_error_with_the_reason(tmp_path):
    missing = SmartBackendAuth("https://ehr/fhir", "c", tmp_path / "none.pem", "s")
    with pytest.raises(AuthError, match="cannot read the SMART private key"):
        missing.assertion("aud")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(AuthError, match="cannot sign"):
        SmartBackendAuth("https://ehr/fhir", "c", tmp_path / "junk.pem", "s").assertion("aud")


def test_auth_chosen_by_settings(tmp_path, key_pair):
    base = dict(runtime_dir=tmp_path, _env_file=None, ehr_base_url="https://ehr/fhir")
    assert from_settings(Settings(**base)).header(None) == {}
    assert from_settings(Settings(**base, ehr_auth="bearer", ehr_token="t0k")).header(None) == {
        "Authorization": "Bearer t0k"}
    smart = from_settings(Settings(**base, ehr_auth="smart", ehr_client_id="c", ehr_private_key_path=key_pair[0]))
    assert isinstance(smart, SmartBackendAuth) and smart._token_url is None  # discovered on first use
    with pytest.raises(ValueError, match="CXR_EHR_TOKEN"):
        BearerAuth("")
    with pytest.raises(ValueError, match="CXR_EHR_CLIENT_ID"):
        from_settings(Settings(**base, ehr_auth="smart"))


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    policy = Policy(retry_base_s=10, retry_max_s=300)
    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (20, 300)):
        delays = {policy.backoff_s(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def test_retry_after_seconds_or_http_date():
    assert retry_after("7") == 7.0
    assert 55 <= retry_after(formatdate(time.time() + 60, usegmt=True)) <= 60
    assert retry_after(None) is None and retry_after("soon") is None


def test_outcome_text_is_the_readable_part():
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Patient.birthDate is invalid"},
        {"severity": "warning", "code": "processing", "details": {"text": "unknown code"}}]}
    assert outcome_text(outcome) == "error: Patient.birthDate is invalid; warning: unknown code"
    assert outcome_text({"resourceType": "Bundle"}) == ""
