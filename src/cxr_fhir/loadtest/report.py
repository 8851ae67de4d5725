"""The figures of a run, their summary for people, and the JSON file."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .model import Config, Upload
from .verify import KINDS


def percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p90/p99, max and mean, rounded to 0.1."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))], 1)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(ordered[-1], 1),
            "mean": round(statistics.fmean(ordered), 1), "n": len(ordered)}


def figures(cfg: Config, run_id: str, base: str, images: list[tuple[str, str, bytes]], uploads: list[Upload],
            checks: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """Everything measured: ``checks`` is the verification's, ``seconds`` the phases' wall times
    (register, upload, verify)."""
    succeeded = [u for u in uploads if u.accepted]
    errors = [u for u in uploads if not u.accepted]
    server: dict[str, list[float]] = defaultdict(list)
    for u in succeeded:
        for k, v in u.server_timings_ms.items():
            server[k].append(v)
    wall_s = seconds["upload"]
    out: dict[str, Any] = {
        "run_id": run_id, "url": base, "uploads": cfg.uploads, "clients": cfg.clients,
        "patients": cfg.patients, "images": len(images),
        "image_bytes_mean": round(statistics.fmean(len(d) for _, _, d in images)),
        "attempted": len(uploads), "succeeded": len(succeeded),
        "retries_503": sum(u.retries_503 for u in uploads),
        "uploads_retried": sum(1 for u in uploads if u.retries_503),
        "retries_503_by_reason": dict(Counter(x for u in uploads for x in u.reasons_503)),
        "errors": len(errors),
        "errors_by_status": dict(Counter(str(u.status) if u.status else "transport" for u in errors)),
        "error_examples": [f"upload {u.seq}: {u.error}" for u in errors[:10]],
        **{k: v for k, v in checks.items() if k != "problems"},
        "wall_s": round(wall_s, 2),
        "throughput_per_s": round(len(succeeded) / wall_s, 2) if wall_s else None,
        "latency_ms": percentiles([u.latency_ms for u in succeeded if u.latency_ms is not None]),
        "accepted_request_ms": percentiles([u.request_ms for u in succeeded if u.request_ms is not None]),
        "server_timings_ms": {k: percentiles(v) for k, v in sorted(server.items())} or None,
        "register_s": round(seconds["register"], 2), "verify_s": round(seconds["verify"], 2),
        "problems": checks["problems"],
    }
    out["ok"] = not any(out[k] for k in ("errors", *KINDS))
    return out


def summary(fig: dict[str, Any]) -> str:
    lat, req = fig["latency_ms"] or {}, fig["accepted_request_ms"] or {}
    lines = [
        f"uploads: {fig['attempted']} attempted, {fig['succeeded']} succeeded, {fig['errors']} errors "
        f"{fig['errors_by_status'] or ''}, {fig['retries_503']} retries after 503 ({fig['uploads_retried']} uploads; "
        f"{fig['retries_503_by_reason'] or 'none'})",
        f"verified: {fig['studies_found']} studies found; lost {fig['lost']}, duplicated {fig['duplicated']}, "
        f"orphaned {fig['orphaned']}, foreign {fig['foreign']}, corrupted {fig['corrupted']}, "
        f"incomplete {fig['incomplete']}, patients with a count mismatch {fig['count_mismatch_patients']}; "
        f"{fig['verified_intact']} images hashed intact",
        f"wall {fig['wall_s']} s, throughput {fig['throughput_per_s']} uploads/s",
        f"latency per upload (ms, 503 waits included): p50 {lat.get('p50')} p90 {lat.get('p90')} "
        f"p99 {lat.get('p99')} max {lat.get('max')}",
        f"accepted request alone (ms): p50 {req.get('p50')} p90 {req.get('p90')} p99 {req.get('p99')} "
        f"max {req.get('max')}",
    ]
    if fig["server_timings_ms"]:
        lines.append("server (Server-Timing, ms p50/p90/max): " + ", ".join(
            f"{k.removesuffix('_ms')} {v['p50']}/{v['p90']}/{v['max']}" for k, v in fig["server_timings_ms"].items()))
    lines += fig["error_examples"] + fig["problems"][:20]
    lines.append("OK" if fig["ok"] else "FAILED")
    return "\n".join(lines)


def write_json(fig: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(fig, indent=1) + "\n")
