"""The real `cxr-fhir` command for end-to-end tests: a migrated runtime, a client token, and
`cxr-fhir serve` on a free loopback port until it answers /ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

CLI = str(Path(sys.executable).parent / "cxr-fhir")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(runtime: Path, database_url: str | None = None, **settings: str) -> dict[str, str]:
    """The process environment for a server on ``runtime`` (SQLite there unless a URL is given)."""
    env = {**os.environ, "CXR_RUNTIME_DIR": str(runtime), "CXR_LOAD_MODELS": "true", **settings}
    env.pop("CXR_DATABASE_URL", None)
    if database_url:
        env["CXR_DATABASE_URL"] = database_url
    return env


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


def migrate_and_token(env: dict[str, str], name: str = "e2e", scope: str = "system/*.*") -> str:
    assert cli(env, "db", "upgrade").returncode == 0
    made = cli(env, "clients", "create", name, "--scope", scope)
    token = made.stdout.strip().rsplit(" ", 1)[-1]
    assert token.startswith("cxr_"), made.stdout + made.stderr
    return token


def start(env: dict[str, str], log, ready_within_s: float = 240) -> tuple[subprocess.Popen, str]:
    """`cxr-fhir serve` on a free port, writing to ``log``; returns once /ready answers 200."""
    port = free_port()
    proc = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s  # loading the models takes a while on 2 cores
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.flush()
            pytest.fail(f"server did not become ready: {Path(log.name).read_text()[-3000:]}")
        time.sleep(0.5)


@contextmanager
def serving(env: dict[str, str], log_path: Path, ready_within_s: float = 240) -> Iterator[str]:
    """Base URL of `cxr-fhir serve` once /ready answers 200; stopped on exit."""
    with open(log_path, "w") as log:
        proc, base = start(env, log, ready_within_s)
        try:
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)
