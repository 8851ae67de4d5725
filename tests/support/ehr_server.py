"""A real FHIR server standing in for the hospital EHR: sekmet-fhir, run from its own virtual
environment (``make test`` creates ``.venv-sekmet``), on 127.0.0.1 on a free port, simulator off.

``EhrServer.stop()`` / ``.start()`` take it down and bring it back on the same port with the same
data, for the outage tests. Tests skip with the reason when sekmet is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cxr_fhir.settings import PROJECT_ROOT

SEKMET = PROJECT_ROOT / ".venv-sekmet" / "bin" / "sekmet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EhrServer:
    def __init__(self, folder: Path, auth: dict | None = None):
        self.folder, self.port = folder, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        settings = {
            "base_url": self.base_url, "host": "127.0.0.1", "port": self.port,
            "data_dir": str(folder / "data"), "own_private_key_path": str(folder / "keys" / "sekmet.pem"),
            "simulator": {"enabled": False},
            "server_auth": auth or {"types": ["none"]},
            "validation": {"inbound": "strict"},
        }
        # JSON is YAML: no YAML library needed on our side.
        (folder / "settings.yaml").write_text(json.dumps(settings, indent=1))

    def start(self, timeout_s: float = 60.0) -> None:
        log = open(self.folder / "sekmet.log", "ab")
        self.proc = subprocess.Popen([str(SEKMET), "serve", "--config", str(self.folder / "settings.yaml")],
                                     cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "SEKMET_CONFIG": str(self.folder / "settings.yaml")},
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sekmet exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sekmet did not answer within {timeout_s}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        path = self.folder / "sekmet.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # -- reading back what we pushed (as the hospital would) ---------------------------------
    def headers(self) -> dict[str, str]:
        return {"Accept": "application/fhir+json"}

    def search(self, resource_type: str, **params: str) -> list[dict]:
        r = httpx.get(f"{self.base_url}/{resource_type}", params={**params, "_count": "100"},
                      headers=self.headers(), timeout=30)
        r.raise_for_status()
        return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]

    def by_identifier(self, resource_type: str, system: str, value: str) -> list[dict]:
        return self.search(resource_type, identifier=f"{system}|{value}")

    def read(self, reference: str) -> dict | None:
        r = httpx.get(f"{self.base_url}/{reference}", headers=self.headers(), timeout=30)
        return r.json() if r.status_code == 200 else None

    def history(self, reference: str) -> list[dict]:
        r = httpx.get(f"{self.base_url}/{reference}/_history", headers=self.headers(), timeout=30)
        r.raise_for_status()
        return [e["resource"] for e in r.json().get("entry", []) if "resource" in e]


def require_sekmet() -> None:
    if not SEKMET.exists():
        pytest.skip(f"sekmet FHIR server not installed at {SEKMET} (run 'make .venv-sekmet/bin/sekmet' or 'make test')")


@pytest.fixture(scope="module")
def ehr(tmp_path_factory):
    """One EHR for a test module (import this fixture into the module)."""
    require_sekmet()
    server = EhrServer(tmp_path_factory.mktemp("ehr"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_ehr(tmp_path):
    """An EHR of the test's own, not started: the test starts, stops and restarts it."""
    require_sekmet()
    server = EhrServer(tmp_path / "ehr")
    yield server
    server.stop()
