"""One Settings object, read from ``CXR_*`` environment variables and passed in explicitly."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# src/cxr_fhir/settings.py -> project root (the package is installed editable from the checkout)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    runtime_dir: Path = Field(default=PROJECT_ROOT / "var", description="Runtime state: database, images, caches")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite file in runtime_dir")
    image_store_dir: Path | None = Field(default=None,
                                         description="Content-addressed image store; default runtime_dir/images")
    weights_dir: Path = Field(default=PROJECT_ROOT / "weights", description="Model weights and their manifest")
    migrations_dir: Path = Field(default=PROJECT_ROOT / "migrations", description="Alembic scripts")
    secret_key: str | None = Field(default=None, description="Signs sessions; default a random key kept in runtime_dir")
    ehr_base_url: str | None = Field(default=None,
                                     description="FHIR base URL of the hospital EHR; unset = push disabled")
    ehr_auth: Literal["none", "bearer", "smart"] = Field(default="none", description="How we authenticate to the EHR")
    ehr_token: str | None = Field(default=None, description="Static bearer token (ehr_auth=bearer)")
    ehr_client_id: str | None = Field(default=None, description="SMART Backend Services client id")
    ehr_token_url: str | None = Field(default=None, description="SMART token endpoint; default discovered from "
                                                               "<base>/.well-known/smart-configuration")
    ehr_private_key_path: Path | None = Field(default=None, description="PEM private key signing the client assertion")
    ehr_key_id: str | None = Field(default=None, description="kid of that key as registered at the EHR")
    ehr_scope: str = Field(default="system/*.write", description="Scopes asked of the SMART token endpoint")
    ehr_ca_bundle: Path | None = Field(default=None, description="CA certificates trusted for the EHR's TLS")
    ehr_verify_tls: bool = True
    ehr_timeout_s: float = Field(default=30.0, gt=0)
    ehr_max_attempts: int = Field(default=12, ge=1, description="Attempts before a delivery is dead-lettered")
    ehr_max_age_hours: float = Field(default=72.0, gt=0, description="Age after which a delivery is dead-lettered")
    ehr_retry_base_s: float = Field(default=10.0, gt=0, description="First retry delay; doubles per attempt, jittered")
    ehr_retry_max_s: float = Field(default=3600.0, gt=0, description="Longest delay between two attempts")
    ehr_lease_s: float = Field(default=300.0, gt=0, description="How long a worker's claim on a delivery lasts")
    ehr_poll_s: float = Field(default=2.0, gt=0, description="Worker's pause when nothing is due")
    # DICOM in: the DIMSE Storage SCP (`cxr-fhir dicom listen`, and `serve` when dicom_listen is on).
    dicom_listen: bool = Field(default=False, description="`serve` also runs the DICOM Storage SCP")
    dicom_ae_title: str = Field(default="CXRFHIR", min_length=1, max_length=16, description="Our AE title")
    dicom_host: str = Field(default="127.0.0.1", description="Address the Storage SCP listens on")
    dicom_port: int = Field(default=11112, ge=1, le=65535, description="Port of the Storage SCP")
    dicom_allowed_callers: str = Field(default="", description="Comma-separated calling AE titles allowed to "
                                                               "associate, each optionally AE@address; empty: none")
    dicom_max_instance_bytes: int = Field(default=100 * 1024 * 1024, gt=0,
                                          description="Largest instance taken by C-STORE or STOW-RS")
    dicom_local_issuers: str = Field(default="", description="Comma-separated IssuerOfPatientID values that mean "
                                                             "the hospital's own MRN (hospital_mrn_system); other "
                                                             "issuers get urn:cxr-fhir:issuer:<issuer>")
    # DICOM out: the PACS destination of the SR and the Secondary Capture (one of the two ways).
    pacs_ae_title: str | None = Field(default=None, max_length=16, description="PACS AE title (C-STORE SCU)")
    pacs_host: str | None = Field(default=None, description="PACS address (C-STORE SCU)")
    pacs_port: int | None = Field(default=None, ge=1, le=65535, description="PACS port (C-STORE SCU)")
    pacs_stow_url: str | None = Field(default=None, description="DICOMweb base URL of the PACS (STOW-RS), "
                                                                "instead of C-STORE")
    pacs_timeout_s: float = Field(default=30.0, gt=0)
    # RIS: HL7 v2 ORU^R01 over MLLP.
    ris_mllp_host: str | None = Field(default=None, description="RIS MLLP address; unset = no HL7 out")
    ris_mllp_port: int | None = Field(default=None, ge=1, le=65535)
    ris_timeout_s: float = Field(default=30.0, gt=0)
    hl7_sending_facility: str = Field(default="CXRFHIR", description="MSH-4")
    hl7_receiving_application: str = Field(default="RIS", description="MSH-5")
    hl7_receiving_facility: str = Field(default="HOSPITAL", description="MSH-6")
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=80_000_000, gt=0, description="Decompression-bomb guard")
    inference_threads: int = Field(default=2, ge=1)
    max_queued_analyses: int = Field(default=16, ge=0, description="Uploads waiting for the models; more get 503")
    analysis_timeout_s: int = Field(default=300, ge=10,
                                    description="A study queued or analysing longer than this was interrupted")
    load_models: bool = Field(default=True, description="Load the inference models at start-up")
    log_level: str = "INFO"
    secure_cookies: bool = Field(default=False, description="Cookies only over TLS; on by itself when "
                                                          "public_base_url is https")
    public_base_url: str | None = Field(default=None, description="The URL clients reach us at (behind a proxy), "
                                                               "e.g. https://cxr.example.org; used for FHIR fullUrl "
                                                               "and paging links instead of the Host header")
    header_timeout_s: float = Field(default=10.0, gt=0, description="A request's headers must arrive within this "
                                                                 "(slow clients are answered 408 and closed)")
    trusted_proxies: str = Field(default="", description="Comma-separated addresses of the reverse proxies whose "
                                                         "X-Forwarded-For / -Proto are believed; empty: none")
    hospital_mrn_system: str = "urn:oid:2.16.840.1.113883.3.9999.1"

    @field_validator("runtime_dir", "weights_dir", "migrations_dir", "image_store_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return v.resolve() if v is not None else None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.runtime_dir / 'cxr-fhir.db'}"

    @property
    def effective_image_store_dir(self) -> Path:
        return self.image_store_dir or self.runtime_dir / "images"

    @property
    def effective_secret_key(self) -> str:
        """The configured key, else one generated once and kept (mode 0600) in the runtime folder."""
        if self.secret_key:
            return self.secret_key
        path = self.runtime_dir / "secret_key"
        if not path.exists():
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    @property
    def cookies_secure(self) -> bool:
        """Secure cookies (and HSTS) when asked, or when the public URL is https."""
        return self.secure_cookies or (self.public_base_url or "").lower().startswith("https://")

    @property
    def ehr_push_enabled(self) -> bool:
        return bool(self.ehr_base_url)

    @property
    def pacs_enabled(self) -> bool:
        return bool(self.pacs_stow_url or (self.pacs_ae_title and self.pacs_host and self.pacs_port))

    @property
    def ris_enabled(self) -> bool:
        return bool(self.ris_mllp_host and self.ris_mllp_port)

    @property
    def destinations(self) -> tuple[str, ...]:
        """The outbox destinations configured here (domain.vocabulary.Destination values)."""
        wanted = {"ehr": self.ehr_push_enabled, "pacs": self.pacs_enabled, "ris": self.ris_enabled}
        return tuple(name for name, on in wanted.items() if on)
