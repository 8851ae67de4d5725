"""`cxr-fhir analyze --json`: one line per file, input order, models loaded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cxr_fhir.domain.findings import FINDING_NAMES


def test_analyze_json_lines_in_input_order(shared_data, tmp_path):
    files = [str(sorted((shared_data / "nih" / "originals").glob("*.png"))[0]),
             str(tmp_path / "notes.txt"),
             str(sorted((shared_data / "kermany" / "train" / "PNEUMONIA").glob("*.jpeg"))[0])]
    Path(files[1]).write_text("not an image")
    proc = subprocess.run([str(Path(sys.executable).parent / "cxr-fhir"), "analyze", "--json", *files],
                          env={**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1  # one file was refused
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    assert lines[1]["error"]["code"] == "not-an-image"
    for line in (lines[0], lines[2]):
        assert set(line["probabilities"]) == set(FINDING_NAMES)
        assert len(line["top3"]) == 3 and line["priority"] in {"routine", "urgent", "stat"}
        assert isinstance(line["boxes"], list) and line["model"]["version"]


def test_bench_reports_every_stage(shared_data, tmp_path):
    image = str(sorted((shared_data / "nih" / "originals").glob("*.png"))[0])
    proc = subprocess.run([str(Path(sys.executable).parent / "cxr-fhir"), "bench", image, "--repeat", "2"],
                          env={**os.environ, "CXR_RUNTIME_DIR": str(tmp_path / "var")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["runs"] == 2
    for stage in ("decode_ms", "classify_ms", "detect_ms", "heatmap_ms", "end_to_end_ms"):
        assert summary[stage]["median"] > 0
