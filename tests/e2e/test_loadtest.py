"""`cxr-fhir loadtest` against the real server (`cxr-fhir serve`, models loaded) with a queue so
short that 8 clients saturate it: the 503s must be honoured and retried, and every accepted upload
must be found exactly once, complete and intact, through the FHIR API."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_fhir.settings import PROJECT_ROOT
from support.server import CLI, environment, migrate_and_token, serving

pytestmark = [pytest.mark.slow, pytest.mark.data]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request, tmp_path) -> Iterator[tuple[str, str, Path]]:
    """(base URL, bearer token, server log) of `cxr-fhir serve` with CXR_MAX_QUEUED_ANALYSES=2."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    env = environment(tmp_path / "var", url, CXR_MAX_QUEUED_ANALYSES="2")
    token = migrate_and_token(env, "load")
    with serving(env, tmp_path / "server.log") as base:
        yield base, token, tmp_path / "server.log"


def test_saturated_server_loses_duplicates_and_corrupts_nothing(server, shared_data, tmp_path, request):
    base, token, log_path = server
    images = sorted((shared_data / "nih" / "images").glob("*.png"))[:6]
    out = tmp_path / "figures.json"
    run = subprocess.run([CLI, "loadtest", "--url", base, "--images", *map(str, images), "--uploads", "40",
                          "--clients", "8", "--patients", "4", "--json", str(out)],
                         env={**os.environ, "CXR_LOADTEST_TOKEN": token}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:] + log_path.read_text()[-3000:]
    fig = json.loads(out.read_text())
    artifacts = PROJECT_ROOT / "test-artifacts" / "loadtest"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"{request.node.callspec.id}.json").write_text(out.read_text())
    assert fig["ok"] is True
    assert fig["attempted"] == fig["succeeded"] == 40 and fig["errors"] == 0
    assert fig["studies_found"] == 40 and fig["verified_intact"] == 40
    for key in ("lost", "duplicated", "orphaned", "foreign", "corrupted", "incomplete", "count_mismatch_patients"):
        assert fig[key] == 0, (key, fig["problems"])
    # the queue (capacity 3) was really full: clients were told 503 and came back
    assert fig["retries_503_by_reason"].get("queue full", 0) >= 1 and fig["uploads_retried"] >= 1
    assert fig["wall_s"] > 0 and fig["throughput_per_s"] > 0
    for key in ("p50", "p90", "p99", "max"):
        assert fig["latency_ms"][key] > 0 and fig["accepted_request_ms"][key] > 0
    assert {"classify_ms", "detect_ms", "heatmap_ms", "total_ms", "handler_ms"} <= set(fig["server_timings_ms"])
    assert "OK" in run.stdout.splitlines()[-1]
    # nothing the server could not handle
    assert '"status": 500' not in log_path.read_text() and "database is locked" not in log_path.read_text()


def test_loadtest_without_a_token_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CXR_LOADTEST_TOKEN"}
    run = subprocess.run([CLI, "loadtest", "--url", "http://127.0.0.1:9", "--images", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "CXR_LOADTEST_TOKEN" in run.stderr
