"""Commands on the registered models themselves: export them for an optimised runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..settings import Settings


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from ..inference.export import export_classifier, export_detector
    from ..inference.registry import ModelRegistryError, read_manifest

    weights_dir = Path(args.weights_dir or settings.weights_dir)
    try:
        manifest = read_manifest(weights_dir)
        exported = {"classifier": export_classifier(weights_dir, settings.inference_threads)}
        if "detector" in manifest:
            exported["detector"] = export_detector(weights_dir, settings.runtime_dir, settings.inference_threads)
    except ModelRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, entry in exported.items():
        for f in entry["files"]:
            size = (weights_dir / f["path"]).stat().st_size / 1e6
            print(f"{name}: {weights_dir / f['path']} ({size:.1f} MB, sha256 {f['sha256'][:12]}…)")
    print(f"registered under runtimes.{args.runtime} in {weights_dir / 'manifest.json'}")
    return 0


def register(sub: Any) -> None:
    """Add this module's commands to the ``cxr-fhir`` parser."""
    models = sub.add_parser("models", help="manage the registered models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    export = models_sub.add_parser("export", help="export the classifier members and the detector for a runtime")
    export.add_argument("--runtime", choices=["onnxruntime"], required=True)
    export.add_argument("--weights-dir", help="the weights folder (default CXR_WEIGHTS_DIR)")
    export.set_defaults(func=_cmd_export)


# ---- cxr-fhir bench (the command is registered in cli/ml.py) ----

STAGES = ("decode_ms", "classify_ms", "detect_ms", "heatmap_ms", "total_ms")
TARGET_MEDIAN_MS, TARGET_SPEEDUP = 40.0, 2.5


def machine() -> dict[str, Any]:
    """The CPU the figures were measured on."""
    import os
    import platform

    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores_visible": os.cpu_count(), "cores_usable": usable,
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}",
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _rss_mb() -> float:
    """Resident set size now (Linux), MB."""
    import os

    fields = _read("/proc/self/statm").split()
    return round(int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1) if len(fields) > 1 else 0.0


def run_bench(files: list[Path], settings: Settings, threads: int, repeat: int,
              overlays: bool = False) -> dict[str, Any]:
    """Per-stage latency of the torch path and the onnxruntime path, interleaved film by film in one run."""
    import os
    import resource
    import statistics
    import time

    import numpy as np
    import onnxruntime
    import torch

    from ..imaging import load
    from ..inference.onnx_runtime import unusable
    from ..inference.pipeline import Pipeline
    from ..inference.registry import read_manifest
    from ..services.analysis import assess

    manifest = read_manifest(settings.weights_dir)
    runtimes = ["torch"]
    if all(unusable(manifest[name]) is None for name in ("classifier", "detector") if name in manifest):
        runtimes.append("onnxruntime")
    pipelines, memory = {}, {}
    for runtime in runtimes:
        before = _rss_mb()
        pipelines[runtime] = Pipeline(settings.weights_dir, settings.runtime_dir, threads, runtime=runtime)
        memory[runtime] = round(_rss_mb() - before, 1)
    blobs = [(f.name, f.read_bytes()) for f in files]
    samples: dict[str, dict[str, list[float]]] = {rt: {s: [] for s in STAGES} for rt in runtimes}
    for round_no in range(repeat):
        for _name, data in blobs:
            # Alternate which runtime goes first, so neither always meets the caches the other left.
            for runtime in runtimes if round_no % 2 == 0 else runtimes[::-1]:
                start = time.perf_counter()
                image = load(data, settings.max_image_pixels)
                decoded = time.perf_counter()
                analysis = assess(pipelines[runtime], image, render_overlays=overlays)
                end = time.perf_counter()
                got = samples[runtime]
                got["decode_ms"].append((decoded - start) * 1000)
                got["total_ms"].append((end - start) * 1000)
                for key in ("classify_ms", "detect_ms", "heatmap_ms"):
                    got[key].append(analysis.timings_ms[key])

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(values), 1), "p95": round(float(np.percentile(values, 95)), 1)}

    stages = {rt: {s: summary(v) for s, v in samples[rt].items()} for rt in runtimes}
    report: dict[str, Any] = {
        "what": "per film: decode -> plausibility gate, findings, boxes, heatmap data"
                + (", three overlay PNGs" if overlays else "") + ", triage",
        "machine": {**machine(), "threads": threads},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "images": [f"{n} ({len(d)} bytes)" for n, d in blobs], "repeat": repeat,
        "runs_per_runtime": len(samples["torch"]["total_ms"]),
        "runtimes": {rt: {"models": pipelines[rt].runtimes, "stages": stages[rt],
                          "rss_added_by_loading_mb": memory[rt]} for rt in runtimes},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000, 1),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    # The figures of the runtime `analyze` and the service use, at the top level as before (scripts read them).
    default = runtimes[-1]
    report["default_runtime"], report["runs"] = default, report["runs_per_runtime"]
    report.update({("end_to_end_ms" if s == "total_ms" else s): stages[default][s] for s in STAGES})
    if "onnxruntime" in stages:
        fast, ref = stages["onnxruntime"], stages["torch"]
        report["speedup_torch_over_onnxruntime"] = {
            s: round(ref[s]["median"] / fast[s]["median"], 2) if fast[s]["median"] > 0 else None for s in STAGES}
        median = fast["total_ms"]["median"]
        speedup = report["speedup_torch_over_onnxruntime"]["total_ms"]
        report["target"] = {"median_ms_at_most": TARGET_MEDIAN_MS, "speedup_at_least": TARGET_SPEEDUP,
                            "median_ms": median, "speedup": speedup,
                            "met": bool(median <= TARGET_MEDIAN_MS and (speedup or 0) >= TARGET_SPEEDUP)}
    return report


def bench_table(report: dict[str, Any]) -> str:
    """The report as a terminal table: median / p95 per stage and runtime, and the ratio."""
    runtimes = list(report["runtimes"])
    m = report["machine"]
    lines = [f"{m['cpu']}, {m['cores_usable']} cores usable ({m['cores_visible']} visible), "
             f"{m['threads']} inference threads; {report['runs_per_runtime']} runs per runtime "
             f"({len(report['images'])} films x {report['repeat']})",
             f"{report['what']}", ""]
    head = f"{'stage':<12}" + "".join(f"{rt + ' median/p95 ms':>30}" for rt in runtimes)
    if "speedup_torch_over_onnxruntime" in report:
        head += f"{'torch/onnxruntime':>20}"
    lines.append(head)
    for stage in STAGES:
        row = f"{stage.removesuffix('_ms'):<12}"
        for rt in runtimes:
            s = report["runtimes"][rt]["stages"][stage]
            row += f"{s['median']:>21.1f} / {s['p95']:>6.1f}"
        if "speedup_torch_over_onnxruntime" in report:
            ratio = report["speedup_torch_over_onnxruntime"][stage]
            row += f"{'' if ratio is None else f'{ratio:.2f}x':>20}"
        lines.append(row)
    lines.append("")
    lines.append("memory: " + ", ".join(f"{rt} models +{report['runtimes'][rt]['rss_added_by_loading_mb']} MB"
                                        for rt in runtimes) + f"; peak RSS {report['peak_rss_mb']} MB")
    if "target" in report:
        t = report["target"]
        lines.append(f"target: median <= {t['median_ms_at_most']:.0f} ms and >= {t['speedup_at_least']}x: "
                     f"{t['median_ms']} ms, {t['speedup']}x -> {'met' if t['met'] else 'NOT met'}")
    else:
        lines.append("onnxruntime: not exported (cxr-fhir models export --runtime onnxruntime); torch only")
    return "\n".join(lines)
