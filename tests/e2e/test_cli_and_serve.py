"""The installed ``cxr-fhir`` command: db upgrade, users create, serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from cxr_fhir.records.tables import User
from cxr_fhir.storage.db import make_engine

CLI = [str(Path(sys.executable).parent / "cxr-fhir")]


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var"), "CXR_DATABASE_URL": db_url,
            "CXR_LOAD_MODELS": "false"}


def _run(args, env, input=None):
    return subprocess.run(CLI + args, env=env, input=input, capture_output=True, text=True, timeout=120)


def test_db_upgrade_twice_and_create_user(tmp_path, db_url):
    env = _env(tmp_path, db_url)
    first = _run(["db", "upgrade"], env)
    assert first.returncode == 0, first.stderr
    assert "was empty" in first.stdout
    second = _run(["db", "upgrade"], env)
    assert second.returncode == 0 and "(unchanged)" in second.stdout

    made = _run(["users", "create", "dr.grey", "--role", "doctor", "--password-stdin"], env,
                input="a-long-enough-secret\n")
    assert made.returncode == 0, made.stderr
    again = _run(["users", "create", "dr.grey", "--role", "doctor", "--password-stdin"], env,
                 input="a-long-enough-secret\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    weak = _run(["users", "create", "dr.yang", "--role", "admin", "--password-stdin"], env, input="short\n")
    assert weak.returncode == 2 and "at least" in weak.stderr

    engine = make_engine(db_url)
    with Session(engine) as s:
        user = s.exec(select(User).where(User.username == "dr.grey")).one()
        assert user.role == "doctor" and user.password_hash.startswith("$argon2id$")
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_within_a_minute(tmp_path):
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'serve.db'}")
    assert _run(["db", "upgrade"], env).returncode == 0
    port = _free_port()
    proc = subprocess.Popen(CLI + ["serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not come up: {proc.stdout.read() if proc.poll() is not None else ''}")
                time.sleep(0.3)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
