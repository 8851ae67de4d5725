"""/health and /ready through the ASGI app."""

from __future__ import annotations

import logging

from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine


def test_health_always_ok_ready_only_after_migrations(settings):
    with TestClient(app=create_app(settings)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        r = client.get("/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["migrations"].startswith("pending")

    migrate.upgrade(make_engine(settings.effective_database_url), settings.migrations_dir)
    with TestClient(app=create_app(settings)) as client:
        r = client.get("/ready")
        assert r.status_code == 200, r.text
        checks = r.json()["checks"]
        assert checks["database"] == "ok" and checks["migrations"] == "ok"
        assert checks["ehr_push"].startswith("disabled")


def test_unreachable_database_is_not_ready(settings):
    settings.database_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    with TestClient(app=create_app(settings)) as client:
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["checks"]["database"].startswith("unreachable")


def test_access_log_never_writes_query_strings(settings, caplog):
    with caplog.at_level(logging.INFO, logger="cxr_fhir.access"):
        with TestClient(app=create_app(settings)) as client:
            client.get("/health?name=Jane%20Doe&identifier=MRN-777")
    records = [r for r in caplog.records if r.name == "cxr_fhir.access"]
    assert records and records[0].path == "/health" and records[0].status == 200
    assert "Jane" not in caplog.text and "MRN-777" not in caplog.text


def test_missing_weights_keep_the_service_unready_with_the_reason(settings, tmp_path):
    migrate.upgrade(make_engine(settings.effective_database_url), settings.migrations_dir)
    settings.load_models = True
    settings.weights_dir = tmp_path / "no-weights"
    with TestClient(app=create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        r = client.get("/ready")
        assert r.status_code == 503
        assert "no model manifest" in r.json()["checks"]["models"]


def test_corrupt_weights_keep_the_service_unready_and_fhir_analyze_says_why(settings, tmp_path):
    import shutil

    from cxr_fhir.security.clients import create_client
    from cxr_fhir.settings import PROJECT_ROOT
    from cxr_fhir.storage.db import writing

    weights = tmp_path / "weights"
    shutil.copytree(PROJECT_ROOT / "weights", weights)
    blob = next(weights.glob("classifier-*.pt"))
    blob.write_bytes(blob.read_bytes()[:-100] + b"\0" * 100)  # a damaged copy, same size
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        token = create_client(s, "c", ["system/*.*"], actor="t")[1]
    settings.load_models, settings.weights_dir = True, weights
    with TestClient(app=create_app(settings)) as client:
        r = client.get("/ready")
        assert r.status_code == 503 and "corrupt" in r.json()["checks"]["models"]
        r = client.post("/fhir/ImagingStudy/$analyze?subject=Patient/x", content=b"x",
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
        assert r.status_code == 503 and "corrupt" in r.json()["issue"][0]["diagnostics"]
