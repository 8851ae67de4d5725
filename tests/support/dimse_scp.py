"""The Storage SCP in a test: a migrated runtime, the real models, the SCP on a free loopback port,
and the two real peers that talk to it (pynetdicom as an SCU, dcmtk's storescu/echoscu as a modality).

    with running_scp(tmp_path, pipeline, callers="MODALITY,PYSCU") as (scp, services):
        storescu(scp.port, film)                       # dcmtk, as a modality would
        c_store(scp.port, [film]) -> [(status, comment)]
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, _config
from sqlmodel import Session, func, select

from cxr_fhir.dimse import StorageSCP
from cxr_fhir.dimse.scp import STORAGE_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from cxr_fhir.records.tables import AuditEvent, Study
from cxr_fhir.services.container import Services
from cxr_fhir.services.queue import InferenceQueue
from cxr_fhir.settings import Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine
from cxr_fhir.storage.image_store import ImageStore

AE_TITLE = "CXRFHIR"
# storescu's option proposing each syntax dicom_films can make (explicit/implicit: its default)
# (storescu cannot propose .57, "jpeg-lossless-nh": send that one with c_store)
STORESCU_PROPOSE = {"explicit": [], "implicit": [], "deflated": ["-xd"], "jpeg-lossless": ["-xs"],
                    "jpeg-lossless-nh": ["-R"], "jpeg-baseline": ["-xy"], "jpeg-ls": ["-xt"], "jpeg2000": ["-xv"]}


@contextmanager
def running_scp(runtime: Path, pipeline: Any, *, database_url: str | None = None,
                callers: str = "MODALITY,PYSCU", max_instance_bytes: int | None = None,
                max_queued: int | None = None, **settings_: Any) -> Iterator[tuple[StorageSCP, Services]]:
    """A Services container on a fresh database (SQLite in ``runtime`` unless a URL is given), the
    models given (a loaded Pipeline), and its StorageSCP listening on 127.0.0.1 at a free port.
    ``settings_``: any other Settings field (e.g. dicom_local_issuers="HOSP")."""
    extra: dict[str, Any] = {"database_url": database_url, **settings_} if database_url else dict(settings_)
    if max_queued is not None:
        extra["max_queued_analyses"] = max_queued
    settings = Settings(runtime_dir=runtime, load_models=False, _env_file=None, dicom_ae_title=AE_TITLE,
                        dicom_allowed_callers=callers, **extra)
    engine = make_engine(settings.effective_database_url)
    migrate.upgrade(engine, settings.migrations_dir)
    services = Services(settings=settings, engine=engine, images=ImageStore(settings.effective_image_store_dir),
                        queue=InferenceQueue(settings.max_queued_analyses))
    services.models = pipeline
    scp = StorageSCP(services, host="127.0.0.1", port=0, max_instance_bytes=max_instance_bytes).start()
    try:
        yield scp, services
    finally:
        scp.stop()
        engine.dispose()


def storescu(port: int, *films: Path, calling: str = "MODALITY", syntax: str = "explicit",
             called: str = AE_TITLE) -> subprocess.CompletedProcess:
    """dcmtk's storescu sends ``films`` in one association (rc 0: every C-STORE succeeded)."""
    return subprocess.run(["storescu", "-v", "-aet", calling, "-aec", called, *STORESCU_PROPOSE[syntax],
                           "127.0.0.1", str(port), *map(str, films)], capture_output=True, text=True, timeout=300)


def echoscu(port: int, calling: str = "MODALITY", called: str = AE_TITLE) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def _scu(calling: str) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 60
    ae.dimse_timeout = 600  # an analysis under a burst on two shared cores takes a while
    ae.add_requested_context(VERIFICATION)
    # One context per (class, syntax): a compressed film is sent as it is only in a context of its
    # own syntax (a context proposing several is answered with one). 4 x 11 + 1 < 128 contexts.
    for sop_class in list(STORAGE_CLASSES.values())[:4]:
        for syntax in TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    return ae


def echo(port: int, calling: str = "PYSCU") -> int | None:
    """C-ECHO from pynetdicom: the status, or None when the association was not accepted."""
    assoc = _scu(calling).associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def c_store(port: int, films: Sequence[Path], calling: str = "PYSCU", raw: bool = False) -> list[tuple[int, str]]:
    """C-STORE each film in one pynetdicom association: [(status, ErrorComment)]. ``raw``: send
    the file's bytes as they are (not decoded first), as a modality with a damaged file would."""
    assoc = _scu(calling).associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established, "association not accepted"
    out = []
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        for film in films:
            rsp = assoc.send_c_store(film if raw else dcmread(film))
            assert "Status" in rsp, "no C-STORE response (association aborted?)"
            out.append((int(rsp.Status), str(rsp.get("ErrorComment", ""))))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
        assoc.release()
    return out


def count(engine: Any, table: Any = Study) -> int:
    with Session(engine) as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def audit_rows(engine: Any, subtype: str) -> list[AuditEvent]:
    with Session(engine) as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.subtype == subtype)
                           .order_by(AuditEvent.recorded)).all())


def image_files(services: Services) -> list[Path]:
    root = services.settings.effective_image_store_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
