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
