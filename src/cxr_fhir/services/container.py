"""What the adapters are given: the settings, the stores, the models and one instance of each
service, built once per process by the app factory and injected into every handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from ..domain.vocabulary import Destination
from ..settings import Settings
from ..storage.image_store import ImageStore
from .analysis import AnalysisService
from .outbox import OutboxService
from .patients import PatientService
from .queue import InferenceQueue
from .reports import ReportService, StudyService

if TYPE_CHECKING:  # the models load only where they run, not wherever this module is imported
    from ..inference.pipeline import Pipeline


@dataclass
class Services:
    settings: Settings
    engine: Engine
    images: ImageStore
    queue: InferenceQueue
    # Filled in by the lifespan once the models are loaded; None = not loaded.
    models: Pipeline | None = None
    model_error: str | None = None
    patients: PatientService = field(init=False)
    reports: ReportService = field(init=False)
    studies: StudyService = field(init=False)
    outbox: OutboxService = field(init=False)
    destinations: tuple[Destination, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.destinations = tuple(Destination(name) for name in self.settings.destinations)
        local = {i.strip(): self.settings.hospital_mrn_system for i in self.settings.dicom_local_issuers.split(",")}
        self.patients = PatientService(self.settings.hospital_mrn_system, {k: v for k, v in local.items() if k})
        self.reports = ReportService(self.destinations)
        self.studies = StudyService(self.destinations)
        self.outbox = OutboxService(self.engine)

    def analysis(self) -> AnalysisService:
        """The upload use case as the pages and $analyze run it (models loaded: check before)."""
        if self.models is None:
            raise RuntimeError("the models are not loaded")
        return AnalysisService(self.engine, self.images, self.models, self.destinations,
                               self.settings.max_image_pixels, self.queue, self.patients)
