"""Commands for the models: analyse and benchmark films, train, evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..settings import Settings


def _cmd_train_classifier(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.classifier import ClassifierConfig, train_classifier

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
    from ..training.gate import fit_gate

    samples, _ = _read_samples(args.nih, args.kermany, args.labels)
    measure = []
    for spec in args.measure:  # FOLDER or FOLDER:MIN_SIDE (the 64 px NIH set needs :32)
        folder, _, side = spec.rpartition(":") if spec.rpartition(":")[2].isdecimal() else (spec, "", "")
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm"})
        measure.append((folder, files, int(side) if side else 128))
    section = fit_gate(samples, Path(args.weights_dir or settings.weights_dir), " ".join(["cxr-fhir"] + sys.argv[1:]),
                       prototypes=args.prototypes, unusual_percentile=args.unusual_percentile, measure=measure)
    v = section["validation"]
    print(f"gate: refuse below {section['refuse_below']}, unusual below {section['unusual_below']}; "
          f"real films refused {v['real_refused']} of {v['real_films']}, flagged unusual {v['real_flagged_unusual']}; "
          f"negatives refused {v['negatives_refused']} of {v['negatives']} "
          f"(loader {v['negatives_refused_by_loader']}, gate {v['negatives_refused_by_gate']} of "
          f"{v['negatives_to_gate']})")
    return 0


def _cmd_train_detector(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.datasets import find_label_table
    from ..training.detector import DetectorConfig, train_detector

    dirs = [Path(d) for d in args.nih]
    cfg = DetectorConfig(size=args.size, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         split_seed=args.split_seed, background_images=args.background_images)
    train_detector(dirs, Path(args.boxes), Path(args.labels) if args.labels else find_label_table(dirs[0]), cfg,
                   Path(args.weights_dir or settings.weights_dir), settings.runtime_dir,
                   " ".join(["cxr-fhir"] + sys.argv[1:]))
    return 0


def _cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from ..imaging import ImageRejected, load_path
    from ..inference.pipeline import Pipeline
    from ..inference.registry import ModelRegistryError
    from ..services.analysis import assess

    try:
        pipeline = Pipeline(settings.weights_dir, settings.runtime_dir, settings.inference_threads)
    except ModelRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for name in args.files:
        try:
            image = load_path(name, settings.max_image_pixels)
            analysis = assess(pipeline, image, render_overlays=bool(args.overlays))
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
            for finding, png in analysis.result.overlays.items():
                (out / f"{Path(name).stem}-{finding}.png").write_bytes(png)
        if args.json:
            print(json.dumps({"file": name, **analysis.as_json()}), flush=True)
        else:
            print(_describe(name, analysis), flush=True)
            if analysis.unusual_film:
                print("  unusual film, read with care (atypical for a chest radiograph)", flush=True)
    return 1 if failed else 0


def _describe(name: str, analysis) -> str:
    """One analysed file in words; ``analysis`` is a services.analysis.Assessment."""
    result = analysis.result
    lines = [f"{name}: priority {analysis.priority.upper()}"
             + (f" ({'; '.join(analysis.priority_reasons)})" if analysis.priority_reasons else "")]
    for item in result.top3:
        flag = "PRESENT" if item.present else "below threshold"
        lines.append(f"  {item.finding:<19} {item.probability:.3f}  (threshold {item.threshold:.3f}, {flag})")
    for box in result.boxes:
        lines.append(f"  box {box.finding} {box.confidence:.2f} [{box.x1:.0f},{box.y1:.0f},"
                     f"{box.x2:.0f},{box.y2:.0f}] ({box.source})")
    lines.append("  all: " + ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items()))
    lines.append(f"  model {result.model.name} {result.model.version}; {analysis.timings_ms['total_ms']:.0f} ms")
    return "\n".join(lines)


def _read_samples(nih: list[str], kermany: list[str], labels: str | None,
                  kermany_normal_negative: bool = False) -> tuple[list, dict]:
    from ..training.datasets import read_kermany, read_nih

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
    from ..training.evaluate import evaluate

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

    from .models import bench_table, run_bench

    files = [Path(f) for f in args.files]
    if not files:
        print("error: give image files to benchmark (e.g. ../shared/data/nih/originals/*.png)", file=sys.stderr)
        return 2
    report = run_bench(files, settings, args.threads, args.repeat, overlays=args.overlays)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    # A table on a terminal; the JSON report when piped (as the command always printed).
    print(bench_table(report) + (f"\nJSON: {args.json}" if args.json else "") if sys.stdout.isatty()
          else json.dumps(report, indent=1))
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to the ``cxr-fhir`` parser."""
    analyze = sub.add_parser("analyze", help="analyse chest X-ray files (models loaded once)")
    analyze.add_argument("files", nargs="+")
    analyze.add_argument("--json", action="store_true", help="one JSON object per line, in input order")
    analyze.add_argument("--overlays", metavar="DIR", help="write the heatmap overlay PNGs here")
    analyze.set_defaults(func=_cmd_analyze)

    bench = sub.add_parser("bench", help="per-stage latency, torch vs onnxruntime, in one run on this CPU")
    bench.add_argument("files", nargs="*")
    bench.add_argument("--repeat", type=int, default=5)
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--json", metavar="OUT", help="also write the figures (and the machine) as JSON here")
    bench.add_argument("--overlays", action="store_true", help="include rendering the three overlay PNGs")
    bench.set_defaults(func=_cmd_bench)

    _register_training(sub)


def _register_training(sub: Any) -> None:
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
    gate.add_argument("--unusual-percentile", type=float, default=1.0,
                      help="films below this percentile of the training/validation films are flagged unusual")
    gate.add_argument("--measure", nargs="*", default=[], metavar="FOLDER[:MIN_SIDE]",
                      help="folders of real films to count false refusals and flags on (e.g. nih64/images:32)")
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
