from cxr_fhir.settings import Settings


def test_defaults_are_embedded_sqlite_under_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_DATABASE_URL", raising=False)
    s = Settings(runtime_dir=tmp_path)
    assert s.effective_database_url == f"sqlite:///{tmp_path}/cxr-fhir.db"
    assert s.effective_image_store_dir == tmp_path / "images"
    assert not s.ehr_push_enabled


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("CXR_EHR_BASE_URL", "https://ehr.example/fhir")
    monkeypatch.setenv("CXR_MAX_UPLOAD_BYTES", "1234")
    s = Settings(runtime_dir=tmp_path)
    assert s.effective_database_url == "postgresql+psycopg://u@h/db"
    assert s.ehr_push_enabled and s.max_upload_bytes == 1234


def test_generated_secret_key_is_private_and_stable(tmp_path):
    s = Settings(runtime_dir=tmp_path)
    key = s.effective_secret_key
    assert len(key) > 40 and key == Settings(runtime_dir=tmp_path).effective_secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
