"""Run the independent R4 validator (npm @medplum/core, installed by `make test`) over resources."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "fhir_validator"


def validate(resources: list[dict]) -> list[dict]:
    """[{index, resourceType, issues}] per resource; issues is empty when the resource is valid R4."""
    node = shutil.which("node")
    assert node, "node is needed for the FHIR validator"
    assert (HERE / "node_modules" / "@medplum" / "core").exists(), "run `make test` (npm ci in tests/fhir_validator)"
    proc = subprocess.run([node, str(HERE / "validate.mjs")], input=json.dumps(resources), capture_output=True,
                          text=True, timeout=120, cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
