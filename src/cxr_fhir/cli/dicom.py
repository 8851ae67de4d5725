"""`cxr-fhir dicom listen`: the DICOM Storage SCP on its own (`serve` runs it too when
CXR_DICOM_LISTEN is on)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..settings import Settings


def _cmd_dicom_listen(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from ..app import load_models
    from ..dimse import StorageSCP
    from ..dimse.scp import describe
    from ..logs import configure_logging
    from ..services.container import Services
    from ..services.queue import InferenceQueue
    from ..storage.db import make_engine
    from ..storage.image_store import ImageStore

    configure_logging(settings.log_level)
    services = Services(settings=settings, engine=make_engine(settings.effective_database_url),
                        images=ImageStore(settings.effective_image_store_dir),
                        queue=InferenceQueue(settings.max_queued_analyses))
    load_models(services)  # the same loading as `serve`: every received film is analysed
    if services.models is None:
        print(f"error: {services.model_error}", file=sys.stderr)
        return 2
    try:
        scp = StorageSCP(services, ae_title=args.ae_title, host=args.host, port=args.port)
    except ValueError as exc:  # a malformed CXR_DICOM_ALLOWED_CALLERS
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not scp.callers:
        print("warning: CXR_DICOM_ALLOWED_CALLERS is empty: every association will be rejected", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scp.start()
    print(json.dumps({"listening": describe(scp)}), flush=True)
    try:
        scp.serve_until(stop)
    finally:
        services.engine.dispose()
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to the ``cxr-fhir`` parser."""
    dicom = sub.add_parser("dicom", help="DICOM: the Storage SCP")
    dicom_sub = dicom.add_subparsers(dest="dicom_command", required=True)
    listen = dicom_sub.add_parser("listen", help="run the DICOM Storage SCP (C-ECHO, C-STORE of chest films)")
    listen.add_argument("--ae-title", help="our AE title (default CXR_DICOM_AE_TITLE)")
    listen.add_argument("--host", help="address to listen on (default CXR_DICOM_HOST)")
    listen.add_argument("--port", type=int, help="port (default CXR_DICOM_PORT; 0: any free port)")
    listen.set_defaults(func=_cmd_dicom_listen)
