"""The `cxr-fhir` command line leaves the same audit trail as the admin pages: creating a user,
creating and revoking an API client each record one AuditEvent naming the operating-system user."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session, select

from cxr_fhir.records.tables import ApiClient, AuditEvent, User
from cxr_fhir.storage.db import make_engine

CLI = [str(Path(sys.executable).parent / "cxr-fhir")]


def _run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def _events(db_url: str) -> list[AuditEvent]:
    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            return list(s.exec(select(AuditEvent).where(AuditEvent.subtype.in_(["user", "client"]))).all())
    finally:
        engine.dispose()


def test_cli_user_and_client_changes_are_audited(tmp_path, db_url):
    env = {**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var"), "CXR_DATABASE_URL": db_url,
           "CXR_LOAD_MODELS": "false"}
    agent = f"cli:{getpass.getuser()}"  # the child runs as the same operating-system user
    _run(["db", "upgrade"], env)
    assert _events(db_url) == []

    _run(["users", "create", "dr.audit", "--role", "doctor", "--password-stdin"], env, "a-long-enough-secret\n")
    _run(["clients", "create", "lab", "--scope", "system/Patient.read"], env)
    _run(["clients", "revoke", "lab"], env)

    engine = make_engine(db_url)
    with Session(engine) as s:
        user_id = s.exec(select(User).where(User.username == "dr.audit")).one().id
        client = s.exec(select(ApiClient).where(ApiClient.name == "lab")).one()
    engine.dispose()
    got = sorted(((e.action, e.subtype, e.entity_type, e.entity_id, e.agent_type, e.agent_id, e.outcome, e.detail)
                  for e in _events(db_url)), key=lambda t: (t[1] != "user", t[0]))
    assert got == [
        ("C", "user", "User", user_id, "user", agent, "0", "created doctor dr.audit"),
        ("C", "client", "ApiClient", client.id, "user", agent, "0", "created client lab"),
        ("U", "client", "ApiClient", client.id, "user", agent, "0", "revoked client lab"),
    ]
    assert client.created_by == agent and client.revoked_at is not None

    # A refused change writes nothing: the audit event shares the refused unit of work.
    refused = subprocess.run(CLI + ["users", "create", "dr.audit", "--role", "doctor", "--password-stdin"], env=env,
                             input="a-long-enough-secret\n", capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert len(_events(db_url)) == 3
