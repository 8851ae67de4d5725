"""`cxr-fhir serve` believes X-Forwarded-For only from the configured reverse proxies: without
CXR_TRUSTED_PROXIES, a caller on the same machine cannot choose the address the audit trail (and
the login throttle) sees."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlmodel import Session, select

from cxr_fhir.records.tables import AuditEvent
from cxr_fhir.storage.db import make_engine
from support.server import cli, environment, serving

FORGED = "203.0.113.9"


def _login_sources(db_url: str) -> list[str | None]:
    engine = make_engine(db_url)
    with Session(engine) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.subtype == "login")).all()
    engine.dispose()
    return [r.source_ip for r in rows]


@pytest.mark.parametrize(("trusted", "expected"), [("", "127.0.0.1"), ("127.0.0.1", FORGED)])
def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path, db_url, trusted, expected):
    env = environment(tmp_path / "var", db_url, CXR_LOAD_MODELS="false", CXR_TRUSTED_PROXIES=trusted)
    env.pop("FORWARDED_ALLOW_IPS", None)
    assert cli(env, "db", "upgrade").returncode == 0
    with serving(env, tmp_path / "serve.log", ready_within_s=120) as base, httpx.Client(base_url=base) as http:
        form = http.get("/login")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text).group(1)
        r = http.post("/login", data={"username": "nobody", "password": "wrong-password-123", "_csrf_token": token},
                      headers={"X-Forwarded-For": FORGED})
        assert r.status_code == 401
    assert _login_sources(db_url) == [expected]
