"""The run's settings, one upload's record, and the error that stops a run before it starts."""

from __future__ import annotations

from dataclasses import dataclass, field

FHIR_JSON = "application/fhir+json"
MRN_SYSTEM = "urn:cxr-fhir:loadtest:mrn"


class LoadTestError(Exception):
    """The run cannot start (bad arguments, server refusing the token, no images)."""


@dataclass
class Upload:
    seq: int
    patient_id: str
    image: str
    media_type: str
    sha256: str
    status: int | None = None  # the final HTTP status (200 = accepted); None = no answer
    error: str | None = None
    retries_503: int = 0
    reasons_503: list[str] = field(default_factory=list)  # the server's diagnostics, one per 503
    latency_ms: float | None = None  # first send to final answer, 503 waits included
    request_ms: float | None = None  # the final request alone
    study_id: str | None = None
    report_id: str | None = None
    observation_ids: list[str] = field(default_factory=list)
    server_timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        """The server answered 200 with a study: the upload must now be found, once and intact."""
        return self.status == 200 and bool(self.study_id)


@dataclass
class Config:
    url: str
    token: str
    images: list[str]
    uploads: int = 500
    clients: int = 8
    patients: int = 20
    timeout_s: float = 120.0
    max_retries: int = 200


def fhir_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/fhir") else url + "/fhir"
