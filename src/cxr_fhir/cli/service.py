"""Commands that run the service and operate it: serve, db, worker, outbox, loadtest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..settings import Settings


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from ..app import create_app
    from ..logs import configure_logging
    from .protocol import with_header_timeout

    configure_logging(settings.log_level)

    host = args.host or settings.host
    port = args.port or settings.port
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None,
                # X-Forwarded-For/-Proto believed only from the configured proxies (uvicorn's default
                # trusts any local peer); none configured: the headers are ignored.
                proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies or "",
                # Request headers have a deadline (slowloris); idle kept-alive connections close after 5 s.
                http=with_header_timeout(settings.header_timeout_s), timeout_keep_alive=5)
    return 0


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from ..storage import migrate
    from ..storage.db import make_engine, writing
    from ..storage.fhir.projection import backfill, backfill_audit_events

    engine = make_engine(settings.effective_database_url)
    before, after = migrate.upgrade(engine, settings.migrations_dir)
    print(f"schema at {after}" + (" (unchanged)" if before == after else f" (was {before or 'empty'})"))
    # Rows stored before the FHIR store existed become visible to the FHIR API.
    with writing(engine) as s:
        counts = backfill(s)
    with writing(engine) as s:  # a session of its own: it lets go of each batch once written
        counts["AuditEvent"] = backfill_audit_events(s)
    if any(counts.values()):
        print("projected into the FHIR store: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0




def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from ..logs import configure_logging
    from ..outbound.senders import build_senders
    from ..outbound.worker import DeliveryWorker, Policy
    from ..storage.db import make_engine
    from ..storage.image_store import ImageStore

    configure_logging(settings.log_level)
    senders = build_senders(settings)
    if not senders:
        print("error: no destination is configured: set CXR_EHR_BASE_URL, the PACS (CXR_PACS_AE_TITLE, "
              "CXR_PACS_HOST, CXR_PACS_PORT or CXR_PACS_STOW_URL) or the RIS (CXR_RIS_MLLP_HOST, "
              "CXR_RIS_MLLP_PORT)", file=sys.stderr)
        return 2
    worker = DeliveryWorker(make_engine(settings.effective_database_url),
                            ImageStore(settings.effective_image_store_dir), senders, Policy.from_settings(settings))
    try:
        if args.once:
            print(f"handled {worker.drain()} deliveries")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker.run(stop)
    finally:
        worker.close()
    return 0


def _cmd_outbox(args: argparse.Namespace, settings: Settings) -> int:
    from ..domain.errors import NotFound
    from ..services.outbox import OutboxService, RetryRefused
    from ..storage.db import make_engine

    service = OutboxService(make_engine(settings.effective_database_url))
    if args.outbox_command == "retry":
        try:
            row = service.retry(args.id, actor="cli")
        except (NotFound, RetryRefused) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"queued {row.id} (report {row.report_id} version {row.report_version}) for delivery now")
        return 0
    print("id\tdestination\treport\tversion\tstatus\tattempts\tnext attempt / delivered\treason")
    for row in service.list(args.status, args.limit, args.destination):
        when = {"pending": row.next_attempt_at, "delivered": row.delivered_at}.get(row.status)
        reason = (row.last_error or "").replace("\n", " ")
        print(f"{row.id}\t{row.destination}\t{row.report_id}\t{row.report_version}\t{row.status}\t{row.attempts}\t"
              f"{f'{when:%Y-%m-%d %H:%M:%S}' if when else '-'}\t{reason}")
    return 0


def _cmd_loadtest(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from ..loadtest import Config, LoadTest, summary

    token = args.token or os.environ.get("CXR_LOADTEST_TOKEN")
    if not token:
        print("error: give --token or set CXR_LOADTEST_TOKEN (cxr-fhir clients create NAME --scope 'system/*.*')",
              file=sys.stderr)
        return 2
    config = Config(url=args.url, token=token, images=args.images, uploads=args.uploads, clients=args.clients,
                    patients=args.patients, timeout_s=args.timeout, max_retries=args.max_retries)
    return _report(lambda log: LoadTest(config, log=log).run(), args.json, summary)


def _cmd_loadtest_dicom(args: argparse.Namespace, settings: Settings) -> int:
    from ..loadtest.dicom_roundtrip import RoundTripConfig, run, summary

    cfg = RoundTripConfig(orthanc_url=args.orthanc_url, orthanc_host=args.orthanc_host, orthanc_port=args.orthanc_port,
                          orthanc_ae=args.orthanc_ae, calling_ae=args.calling_ae, films=tuple(args.films),
                          count=args.count, timeout_s=args.timeout, require_sc=not args.sr_only)
    return _report(lambda log: run(cfg, log=log), args.json, summary)


def _report(measure: Callable[[Callable[[str], None]], dict[str, Any]], json_out: str | None,
            summary: Callable[[dict[str, Any]], str]) -> int:
    """A load test's ending: its figures to JSON when asked and as a table; exit 0 when nothing was
    lost, 1 when something was, 2 when it could not run at all."""
    from ..loadtest import LoadTestError, write_json

    try:
        figures = measure(lambda m: print(m, flush=True))
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if json_out:
        write_json(figures, json_out)
    print(summary(figures), flush=True)
    return 0 if figures["ok"] else 1




def register(sub: Any) -> None:
    """Add this module's commands to the ``cxr-fhir`` parser."""
    serve = sub.add_parser("serve", help="run the web service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending migrations (idempotent)").set_defaults(func=_cmd_db_upgrade)

    worker = sub.add_parser("worker", help="deliver queued reports to the EHR, the PACS and the RIS, as configured "
                                           "(also runs inside serve)")
    worker.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    worker.set_defaults(func=_cmd_worker)

    outbox = sub.add_parser("outbox", help="deliveries to the EHR, the PACS and the RIS: list, retry")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    o_list = outbox_sub.add_parser("list", help="newest first, with the destination's reason for failures")
    o_list.add_argument("--status", choices=["pending", "delivered", "dead"])
    o_list.add_argument("--destination", choices=["ehr", "pacs", "ris"])
    o_list.add_argument("--limit", type=int, default=100)
    o_retry = outbox_sub.add_parser("retry", help="queue a failed delivery for an attempt now")
    o_retry.add_argument("id")
    outbox.set_defaults(func=_cmd_outbox)

    lt = sub.add_parser("loadtest", help="concurrent $analyze uploads against a running server, then verify "
                                         "through the FHIR API that none was lost, duplicated or corrupted")
    lt.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (its /fhir is used)")
    lt.add_argument("--token", help="bearer token with system/*.* (default: env CXR_LOADTEST_TOKEN)")
    lt.add_argument("--images", nargs="+", required=True, metavar="DIR_OR_FILE", help="PNG/JPEG files or folders")
    lt.add_argument("--uploads", type=int, default=500, help="uploads in total")
    lt.add_argument("--clients", type=int, default=8, help="concurrent clients (threads, one connection each)")
    lt.add_argument("--patients", type=int, default=20, help="patients registered for the run")
    lt.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    lt.add_argument("--max-retries", type=int, default=200, help="503 retries per upload before it is an error")
    lt.add_argument("--json", metavar="OUT", help="write the figures here")
    lt.set_defaults(func=_cmd_loadtest)

    ltd = sub.add_parser("loadtest-dicom", help="films by C-STORE to a PACS (Orthanc) that routes them to a running "
                                                "cxr-fhir; time from C-STORE to the SR stored back in the PACS")
    ltd.add_argument("--orthanc-url", default="http://127.0.0.1:8042", help="Orthanc REST API (user:pass@ if needed)")
    ltd.add_argument("--orthanc-host", default="127.0.0.1", help="Orthanc DICOM address")
    ltd.add_argument("--orthanc-port", type=int, default=4242, help="Orthanc DICOM port")
    ltd.add_argument("--orthanc-ae", default="ORTHANC", help="Orthanc AE title (called AE)")
    ltd.add_argument("--calling-ae", default="MODALITY", help="our AE title as the modality")
    ltd.add_argument("--films", nargs="+", required=True, metavar="DIR_OR_FILE", help="DX/CR DICOM or PNG films")
    ltd.add_argument("--count", type=int, default=20, help="films sent, one at a time, cycling through those given")
    ltd.add_argument("--timeout", type=float, default=300.0, help="seconds per film for its results to arrive")
    ltd.add_argument("--sr-only", action="store_true", help="do not wait for the Secondary Capture")
    ltd.add_argument("--json", metavar="OUT", help="write the figures here")
    ltd.set_defaults(func=_cmd_loadtest_dicom)
