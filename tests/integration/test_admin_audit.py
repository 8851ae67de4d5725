"""The admin pages audit account and client changes exactly once, naming the admin, the same way the
command line does (the security functions write the event; see tests/e2e/test_cli_audit.py)."""

from __future__ import annotations

import re

from litestar.testing import TestClient
from sqlmodel import Session, select

from cxr_fhir.app import create_app
from cxr_fhir.records.tables import ApiClient, AuditEvent, User
from cxr_fhir.security.users import create_user
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing

PASSWORD = "correct-horse-battery"


def test_admin_page_changes_are_audited_once(settings, db_url):
    settings.database_url = db_url
    engine = make_engine(db_url)
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        create_user(s, "admin", PASSWORD, "admin", actor="test")
    with TestClient(app=create_app(settings)) as client:
        html = client.get("/login").text
        token = re.search(r'name="_csrf_token" value="([^"]+)"', html).group(1)
        assert client.post("/login", data={"username": "admin", "password": PASSWORD, "_csrf_token": token},
                           follow_redirects=False).status_code == 303
        token = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/admin/users").text).group(1)
        form = {"_csrf_token": token}
        for path, data in (("/admin/users", {"username": "dr.yang", "password": PASSWORD, "role": "doctor"}),
                           ("/admin/users/dr.yang/disable", {"disabled": "1"}),
                           ("/admin/users/dr.yang/disable", {"disabled": "0"}),
                           ("/admin/users/dr.yang/password", {"password": PASSWORD + "-2"}),
                           ("/admin/clients", {"name": "ehr", "scopes": "system/*.read"}),
                           ("/admin/clients/ehr/revoke", {})):
            assert client.post(path, data={**form, **data}).status_code == 200, path
    with Session(engine) as s:
        user_id = s.exec(select(User).where(User.username == "dr.yang")).one().id
        client_id = s.exec(select(ApiClient).where(ApiClient.name == "ehr")).one().id
        rows = s.exec(select(AuditEvent).where(AuditEvent.subtype.in_(["user", "client"]))
                      .order_by(AuditEvent.recorded)).all()
    engine.dispose()
    got = sorted((e.subtype != "user", e.action, e.entity_type, e.entity_id, e.agent_type, e.agent_id, e.detail)
                 for e in rows if e.agent_id == "admin")
    assert got == sorted([
        (False, "C", "User", user_id, "user", "admin", "created doctor dr.yang"),
        (False, "U", "User", user_id, "user", "admin", "disabled dr.yang"),
        (False, "U", "User", user_id, "user", "admin", "enabled dr.yang"),
        (False, "U", "User", user_id, "user", "admin", "reset password of dr.yang"),
        (True, "C", "ApiClient", client_id, "user", "admin", "created client ehr"),
        (True, "U", "ApiClient", client_id, "user", "admin", "revoked client ehr"),
    ])
    assert all(e.source_ip for e in rows if e.agent_id == "admin")
