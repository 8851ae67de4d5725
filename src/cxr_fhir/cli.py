"""The ``cxr-fhir`` command line."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from .settings import Settings


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .app import create_app
    from .logs import configure_logging

    configure_logging(settings.log_level)

    host = args.host or settings.host
    port = args.port or settings.port
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)
    return 0


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from .storage import migrate
    from .storage.db import make_engine

    from .storage.fhir.projection import backfill
    from .storage.db import writing

    engine = make_engine(settings.effective_database_url)
    before, after = migrate.upgrade(engine, settings.migrations_dir)
    print(f"schema at {after}" + (" (unchanged)" if before == after else f" (was {before or 'empty'})"))
    # Rows stored before the FHIR store existed become visible to the FHIR API.
    with writing(engine) as s:
        counts = backfill(s)
    if any(counts.values()):
        print("projected into the FHIR store: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


def _cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from .security.users import UserError, create_user
    from .storage.db import make_engine, writing

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            print("error: the passwords differ", file=sys.stderr)
            return 2
    engine = make_engine(settings.effective_database_url)
    try:
        with writing(engine) as session:
            user = create_user(session, args.username, password, args.role)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {user.role} {user.username}")
    return 0


def _cmd_train_classifier(args: argparse.Namespace, settings: Settings) -> int:
    from .training.classifier import ClassifierConfig, train_classifier

    samples, data = _read_samples(args.nih, args.kermany, args.labels, args.kermany_normal_negative)
    if not samples:
        print("error: no training images (give --nih and/or --kermany folders)", file=sys.stderr)
        return 2
    cfg = ClassifierConfig(arch=args.arch, size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, seeds=args.seeds, split_seed=args.split_seed, patience=args.patience,
                           kermany_per_epoch=args.kermany_per_epoch, threads=args.threads)
    train_classifier(samples, cfg, Path(args.weights_dir or settings.weights_dir),
                     settings.runtime_dir / "cache", " ".join(["cxr-fhir"] + sys.argv[1:]), data)
    return 0


def _cmd_train_gate(args: argparse.Namespace, settings: Settings) -> int:
    from .training.gate import fit_gate

    samples, _ = _read_samples(args.nih, args.kermany, args.labels)
    section = fit_gate(samples, Path(args.weights_dir or settings.weights_dir), " ".join(["cxr-fhir"] + sys.argv[1:]),
                       prototypes=args.prototypes)
    print(f"gate: {section['validation']}, threshold {section['min_similarity']}")
    return 0


def _cmd_train_detector(args: argparse.Namespace, settings: Settings) -> int:
    from .training.datasets import find_label_table
    from .training.detector import DetectorConfig, train_detector

    dirs = [Path(d) for d in args.nih]
    cfg = DetectorConfig(size=args.size, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         split_seed=args.split_seed, background_images=args.background_images)
    train_detector(dirs, Path(args.boxes), Path(args.labels) if args.labels else find_label_table(dirs[0]), cfg,
                   Path(args.weights_dir or settings.weights_dir), settings.runtime_dir,
                   " ".join(["cxr-fhir"] + sys.argv[1:]))
    return 0


def _cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .imaging import ImageRejected, load_path
    from .inference.pipeline import Pipeline
    from .inference.registry import ModelRegistryError

    try:
        pipeline = Pipeline(settings.weights_dir, settings.runtime_dir, settings.inference_threads)
    except ModelRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for name in args.files:
        try:
            image = load_path(name, settings.max_image_pixels)
            analysis = pipeline.run(image, render_overlays=bool(args.overlays))
        except (ImageRejected, OSError) as exc:
            failed += 1
            reason = exc.reason if isinstance(exc, ImageRejected) else f"cannot read the file ({exc.strerror})"
            code = exc.code if isinstance(exc, ImageRejected) else "unreadable"
            if args.json:
                print(json.dumps({"file": name, "error": {"code": code, "reason": reason}}), flush=True)
            else:
                print(f"{name}: rejected: {reason}", flush=True)
            continue
        if args.overlays:
            out = Path(args.overlays)
            out.mkdir(parents=True, exist_ok=True)
            for finding, png in analysis.overlays.items():
                (out / f"{Path(name).stem}-{finding}.png").write_bytes(png)
        if args.json:
            print(json.dumps({"file": name, **analysis.as_json()}), flush=True)
        else:
            print(_describe(name, analysis), flush=True)
    return 1 if failed else 0


def _describe(name: str, analysis) -> str:
    lines = [f"{name}: priority {analysis.priority.upper()}"
             + (f" ({'; '.join(analysis.priority_reasons)})" if analysis.priority_reasons else "")]
    for item in analysis.top3:
        flag = "PRESENT" if item["present"] else "below threshold"
        lines.append(f"  {item['finding']:<19} {item['probability']:.3f}  (threshold {item['threshold']:.3f}, {flag})")
    for box in analysis.boxes:
        lines.append(f"  box {box['finding']} {box['confidence']:.2f} [{box['x1']:.0f},{box['y1']:.0f},"
                     f"{box['x2']:.0f},{box['y2']:.0f}] ({box['source']})")
    lines.append("  all: " + ", ".join(f"{k} {v:.3f}" for k, v in analysis.probabilities.items()))
    lines.append(f"  model {analysis.model['name']} {analysis.model['version']}; {analysis.timings_ms['total_ms']:.0f} ms")
    return "\n".join(lines)


def _read_samples(nih: list[str], kermany: list[str], labels: str | None,
                  kermany_normal_negative: bool = False) -> tuple[list, dict]:
    from .training.datasets import read_kermany, read_nih

    samples, described = [], {}
    for folder in nih:
        found = read_nih(Path(folder), Path(labels) if labels else None,
                         source="nih64" if "64" in Path(folder).parent.name else "nih")
        samples += found
        described[str(folder)] = f"NIH ChestX-ray14 layout, {len(found)} images"
    for folder in kermany:
        found = read_kermany(Path(folder), normal_negative_for_all=kermany_normal_negative)
        samples += found
        described[str(folder)] = f"Kermany folder-per-class layout, {len(found)} images"
    return samples, described


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from .training.evaluate import evaluate

    samples, _ = _read_samples(args.nih, args.kermany, args.labels)
    if not samples:
        print("error: no images to evaluate (give --nih and/or --kermany folders)", file=sys.stderr)
        return 2
    out = Path(args.out)
    report = evaluate(samples, settings.weights_dir, settings.runtime_dir, out, args.split,
                      Path(args.boxes) if args.boxes else None, args.bootstrap)
    print((out / "report.md").read_text())
    print(f"results in {out}/ (metrics.json, report.md, roc.png)")
    return 0 if report["images"] else 1


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import statistics
    import time

    from .imaging import load
    from .inference.pipeline import Pipeline

    files = [Path(f) for f in args.files]
    if not files:
        print("error: give image files to benchmark (e.g. ../shared/data/nih/originals/*.png)", file=sys.stderr)
        return 2
    pipeline = Pipeline(settings.weights_dir, settings.runtime_dir, args.threads)
    blobs = [(f.name, f.read_bytes()) for f in files]
    stages: dict[str, list[float]] = {"decode_ms": [], "classify_ms": [], "detect_ms": [], "heatmap_ms": [],
                                      "end_to_end_ms": []}
    for _ in range(args.repeat):
        for _name, data in blobs:
            start = time.perf_counter()
            image = load(data, settings.max_image_pixels)
            decoded = time.perf_counter()
            analysis = pipeline.run(image, render_overlays=True)
            stages["end_to_end_ms"].append((time.perf_counter() - start) * 1000)
            stages["decode_ms"].append((decoded - start) * 1000)
            for key in ("classify_ms", "detect_ms", "heatmap_ms"):
                stages[key].append(analysis.timings_ms[key])

    def pct(values: list[float], q: float) -> float:
        return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 1)

    summary = {"runs": len(stages["end_to_end_ms"]), "threads": args.threads,
               "images": [f"{n} ({len(d)} bytes)" for n, d in blobs],
               **{k: {"median": round(statistics.median(v), 1), "p90": pct(v, 0.9)} for k, v in stages.items()}}
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_clients(args: argparse.Namespace, settings: Settings) -> int:
    from sqlmodel import select

    from .security.clients import ClientError, create_client, revoke_client
    from .storage.db import make_engine, writing
    from .storage.tables import ApiClient

    engine = make_engine(settings.effective_database_url)
    try:
        with writing(engine) as session:
            if args.clients_command == "create":
                client, token = create_client(session, args.name, args.scope, created_by="cli")
                print(f"created client {client.name} with scopes {' '.join(client.scopes)}")
                print(f"token (shown once, keep it secret): {token}")
            elif args.clients_command == "revoke":
                client = revoke_client(session, args.name)
                print(f"revoked client {client.name}")
            else:
                for c in session.exec(select(ApiClient).order_by(ApiClient.name)).all():
                    state = f"revoked {c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "active"
                    print(f"{c.name}\t{state}\t{' '.join(c.scopes)}")
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from .ehr.client import EhrClient
    from .ehr.worker import DeliveryWorker, Policy
    from .logs import configure_logging
    from .storage.db import make_engine
    from .storage.image_store import ImageStore

    configure_logging(settings.log_level)
    if not settings.ehr_push_enabled:
        print("error: EHR push is disabled: set CXR_EHR_BASE_URL", file=sys.stderr)
        return 2
    worker = DeliveryWorker(make_engine(settings.effective_database_url), ImageStore(settings.effective_image_store_dir),
                            EhrClient.from_settings(settings), Policy.from_settings(settings))
    try:
        if args.once:
            print(f"handled {worker.drain()} deliveries")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker.run(stop)
    finally:
        worker.client.close()
    return 0


def _cmd_outbox(args: argparse.Namespace, settings: Settings) -> int:
    from .services.outbox import OutboxService, RetryRefused
    from .storage.db import make_engine
    from .domain.errors import NotFound

    service = OutboxService(make_engine(settings.effective_database_url))
    if args.outbox_command == "retry":
        try:
            row = service.retry(args.id, actor="cli")
        except (NotFound, RetryRefused) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"queued {row.id} (report {row.report_id} version {row.report_version}) for delivery now")
        return 0
    print("id\treport\tversion\tstatus\tattempts\tnext attempt / delivered\treason")
    for row in service.list(args.status, args.limit):
        when = {"pending": row.next_attempt_at, "delivered": row.delivered_at}.get(row.status)
        reason = (row.last_error or "").replace("\n", " ")
        print(f"{row.id}\t{row.report_id}\t{row.report_version}\t{row.status}\t{row.attempts}\t"
              f"{f'{when:%Y-%m-%d %H:%M:%S}' if when else '-'}\t{reason}")
    return 0


def _cmd_loadtest(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from .loadtest import Config, LoadTest, LoadTestError, summary, write_json

    token = args.token or os.environ.get("CXR_LOADTEST_TOKEN")
    if not token:
        print("error: give --token or set CXR_LOADTEST_TOKEN (cxr-fhir clients create NAME --scope 'system/*.*')",
              file=sys.stderr)
        return 2
    try:
        test = LoadTest(Config(url=args.url, token=token, images=args.images, uploads=args.uploads,
                               clients=args.clients, patients=args.patients, timeout_s=args.timeout,
                               max_retries=args.max_retries), log=lambda m: print(m, flush=True))
        figures = test.run()
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(figures, args.json)
    print(summary(figures), flush=True)
    return 0 if figures["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-fhir", description="AI chest X-ray assistant that speaks FHIR R4")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending migrations (idempotent)").set_defaults(func=_cmd_db_upgrade)

    users = sub.add_parser("users", help="user accounts").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--role", choices=["admin", "doctor"], required=True)
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.set_defaults(func=_cmd_users_create)

    clients = sub.add_parser("clients", help="FHIR API clients and their bearer tokens")
    clients_sub = clients.add_subparsers(dest="clients_command", required=True)
    c_create = clients_sub.add_parser("create", help="create a client; prints its token once")
    c_create.add_argument("name")
    c_create.add_argument("--scope", action="append", required=True,
                          help="system/<Resource|*>.<read|write|*>; repeat for several")
    c_revoke = clients_sub.add_parser("revoke", help="revoke a client's token")
    c_revoke.add_argument("name")
    clients_sub.add_parser("list", help="list clients and their scopes")
    clients.set_defaults(func=_cmd_clients)

    worker = sub.add_parser("worker", help="deliver queued reports to the EHR (also runs inside serve)")
    worker.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    worker.set_defaults(func=_cmd_worker)

    outbox = sub.add_parser("outbox", help="EHR deliveries: list, retry")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    o_list = outbox_sub.add_parser("list", help="newest first, with the EHR's reason for failures")
    o_list.add_argument("--status", choices=["pending", "delivered", "dead"])
    o_list.add_argument("--limit", type=int, default=100)
    o_retry = outbox_sub.add_parser("retry", help="queue a failed delivery for an attempt now")
    o_retry.add_argument("id")
    outbox.set_defaults(func=_cmd_outbox)

    analyze = sub.add_parser("analyze", help="analyse chest X-ray files (models loaded once)")
    analyze.add_argument("files", nargs="+")
    analyze.add_argument("--json", action="store_true", help="one JSON object per line, in input order")
    analyze.add_argument("--overlays", metavar="DIR", help="write the heatmap overlay PNGs here")
    analyze.set_defaults(func=_cmd_analyze)

    bench = sub.add_parser("bench", help="latency of decode + classify + detect + heatmap on the CPU")
    bench.add_argument("files", nargs="*")
    bench.add_argument("--repeat", type=int, default=5)
    bench.add_argument("--threads", type=int, default=2)
    bench.set_defaults(func=_cmd_bench)

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

    ev = sub.add_parser("evaluate", help="measure the registered models on labelled data")
    ev.add_argument("--nih", nargs="*", default=[], help="NIH-layout image folders")
    ev.add_argument("--kermany", nargs="*", default=[], help="folder-per-class (NORMAL/PNEUMONIA) roots")
    ev.add_argument("--labels", help="the NIH Data_Entry_2017 table, when not beside the images")
    ev.add_argument("--boxes", help="expert boxes.csv for detector mAP and localisation")
    ev.add_argument("--split", choices=["val", "all"], default="val",
                    help="val: the training run's patient-wise validation split; all: every image (held-out data)")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    ev.add_argument("--out", default="results/evaluation", help="results folder")
    ev.set_defaults(func=_cmd_evaluate)

    train = sub.add_parser("train", help="train a model and register it in the weights manifest")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    clf = train_sub.add_parser("classifier", help="the 14-finding classifier")
    clf.add_argument("--nih", nargs="*", default=[], help="NIH-layout image folders (label table beside them)")
    clf.add_argument("--labels", help="the NIH Data_Entry_2017 table, when not beside the images")
    clf.add_argument("--kermany", nargs="*", default=[], help="folder-per-class (NORMAL/PNEUMONIA) roots")
    clf.add_argument("--kermany-normal-negative", action="store_true",
                     help="count a NORMAL pediatric image as negative for the 14 NIH findings too")
    clf.add_argument("--arch", default="resnet18")
    clf.add_argument("--size", type=int, default=224)
    clf.add_argument("--epochs", type=int, default=22)
    clf.add_argument("--batch-size", type=int, default=32)
    clf.add_argument("--lr", type=float, default=1e-3)
    clf.add_argument("--seeds", type=int, nargs="+", default=[0], help="one model per seed, averaged")
    clf.add_argument("--split-seed", type=int, default=0)
    clf.add_argument("--patience", type=int, default=6)
    clf.add_argument("--kermany-per-epoch", type=int, default=700)
    clf.add_argument("--threads", type=int, default=2)
    clf.add_argument("--weights-dir", help="where to write (default CXR_WEIGHTS_DIR)")
    clf.set_defaults(func=_cmd_train_classifier)

    gate = train_sub.add_parser("gate", help="the chest-radiograph plausibility gate")
    gate.add_argument("--nih", nargs="*", default=[], help="NIH-layout image folders (full resolution)")
    gate.add_argument("--kermany", nargs="*", default=[], help="folder-per-class roots")
    gate.add_argument("--labels", help="the NIH Data_Entry_2017 table, when not beside the images")
    gate.add_argument("--prototypes", type=int, default=16)
    gate.add_argument("--weights-dir", help="where to write (default CXR_WEIGHTS_DIR)")
    gate.set_defaults(func=_cmd_train_gate)

    det = train_sub.add_parser("detector", help="the YOLO lesion detector")
    det.add_argument("--nih", nargs="+", required=True,
                     help="NIH-layout image folders; the first is also used for validation")
    det.add_argument("--boxes", required=True, help="boxes.csv (image, finding, x1, y1, x2, y2, source)")
    det.add_argument("--labels", help="the NIH Data_Entry_2017 table, when not beside the images")
    det.add_argument("--size", type=int, default=512)
    det.add_argument("--epochs", type=int, default=60)
    det.add_argument("--batch-size", type=int, default=8)
    det.add_argument("--background-images", type=int, default=60)
    det.add_argument("--seed", type=int, default=0)
    det.add_argument("--split-seed", type=int, default=0)
    det.add_argument("--weights-dir", help="where to write (default CXR_WEIGHTS_DIR)")
    det.set_defaults(func=_cmd_train_detector)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
