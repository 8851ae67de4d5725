"""HSTS behind TLS: with an https public URL every answer (page, API, error) carries it; without, none."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.settings import Settings


@pytest.mark.parametrize(("public", "expected"), [("https://cxr.example.org", True), (None, False)])
def test_every_answer_carries_hsts_only_behind_tls(tmp_path, public, expected):
    settings = Settings(runtime_dir=tmp_path / "var", load_models=False, public_base_url=public, _env_file=None)
    with TestClient(create_app(settings)) as client:
        for path in ("/login", "/health", "/fhir/metadata", "/no-such-page", "/fhir/Patient"):
            r = client.get(path)
            hsts = r.headers.get("strict-transport-security", "")
            assert ("max-age=31536000" in hsts) is expected, (path, r.status_code)
