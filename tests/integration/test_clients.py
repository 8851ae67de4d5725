"""API clients on both databases: hashed tokens, scopes, revocation; and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cxr_fhir.records.tables import ApiClient
from cxr_fhir.security.clients import ClientError, allows, authenticate, create_client, revoke_client
from cxr_fhir.storage.db import writing


def test_token_is_stored_hashed_and_revocable(engine):
    with writing(engine) as s:
        client, token = create_client(s, "ehr-bridge", ["system/Patient.read", "system/DiagnosticReport.*"],
                                      actor="admin")
    with Session(engine) as s:
        row = s.exec(select(ApiClient)).one()
        assert token not in row.token_sha256 and len(row.token_sha256) == 64
        assert authenticate(s, token).name == "ehr-bridge"
        assert authenticate(s, token + "x") is None and authenticate(s, "Bearer " + token) is None
    with writing(engine) as s:
        revoke_client(s, "ehr-bridge", actor="admin")
    with Session(engine) as s:
        assert authenticate(s, token) is None
    with pytest.raises(ClientError, match="already exists"):
        with writing(engine) as s:
            create_client(s, "ehr-bridge", ["system/*.read"], actor="admin")


@pytest.mark.parametrize("scopes", [[], ["patient/Patient.read"], ["system/Patient.delete"], ["system/patient.read"]])
def test_bad_scopes_are_refused(engine, scopes):
    with pytest.raises(ClientError):
        with writing(engine) as s:
            create_client(s, "x", scopes, actor="admin")


def test_scope_semantics():
    scopes = ["system/Patient.read", "system/Observation.*"]
    assert allows(scopes, "Patient", "read") and not allows(scopes, "Patient", "write")
    assert allows(scopes, "Observation", "write") and not allows(scopes, "DiagnosticReport", "read")
    assert allows(["system/*.read"], "AuditEvent", "read") and not allows(["system/*.read"], "AuditEvent", "write")


def test_cli_prints_the_token_once_and_revokes(tmp_path):
    env = {**os.environ, "CXR_RUNTIME_DIR": str(tmp_path), "CXR_LOAD_MODELS": "false"}
    cli = str(Path(sys.executable).parent / "cxr-fhir")
    assert subprocess.run([cli, "db", "upgrade"], env=env, capture_output=True).returncode == 0
    made = subprocess.run([cli, "clients", "create", "lab", "--scope", "system/Patient.read"], env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    token = made.stdout.split("token (shown once, keep it secret): ")[1].strip()
    assert token.startswith("cxr_")
    listed = subprocess.run([cli, "clients", "list"], env=env, capture_output=True, text=True).stdout
    assert "lab\tactive\tsystem/Patient.read" in listed and token not in listed
    assert subprocess.run([cli, "clients", "revoke", "lab"], env=env, capture_output=True).returncode == 0
    assert "revoked" in subprocess.run([cli, "clients", "list"], env=env, capture_output=True, text=True).stdout
    bad = subprocess.run([cli, "clients", "create", "x", "--scope", "all"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid scope" in bad.stderr
