"""The model registry is data: ``weights/manifest.json`` says what each model is and how to use it.

Labels, input size, normalisation, calibration, thresholds and the SHA-256 of every weight file
travel with the weights, so swapping weights needs no code change. A weight file whose hash does
not match is refused before it is deserialised.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ModelRegistryError(RuntimeError):
    """The weights cannot be used; the message says why."""


def manifest_path(weights_dir: Path) -> Path:
    return Path(weights_dir) / MANIFEST


def read_manifest(weights_dir: Path) -> dict[str, Any]:
    path = manifest_path(weights_dir)
    if not path.exists():
        raise ModelRegistryError(f"no model manifest at {path}: train the models or point CXR_WEIGHTS_DIR at them")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelRegistryError(f"model manifest {path} is not valid JSON: {exc}") from exc
    return manifest


def manifest_sha256(weights_dir: Path) -> str:
    return hashlib.sha256(manifest_path(weights_dir).read_bytes()).hexdigest()


def section(weights_dir: Path, name: str) -> dict[str, Any]:
    manifest = read_manifest(weights_dir)
    if name not in manifest:
        raise ModelRegistryError(f"the model manifest has no '{name}' entry")
    entry: dict[str, Any] = manifest[name]
    return entry


def verified_file(weights_dir: Path, entry: dict[str, str]) -> Path:
    """The weight file's path, after checking it exists and its SHA-256 matches the manifest."""
    path = Path(weights_dir) / entry["path"]
    if path.resolve().parent != Path(weights_dir).resolve():
        raise ModelRegistryError(f"weight file {entry['path']!r} lies outside the weights folder")
    if not path.exists():
        raise ModelRegistryError(f"weight file {path} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ModelRegistryError(f"weight file {path.name} is corrupt or not the registered one: "
                                 f"SHA-256 {digest[:12]}… but the manifest says {entry['sha256'][:12]}…")
    return path


def write_manifest_section(weights_dir: Path, name: str, content: dict[str, Any]) -> None:
    """Replace one model's entry, keeping the others; written atomically."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_path(weights_dir)
    manifest = json.loads(path.read_text()) if path.exists() else {"schema": 1}
    manifest[name] = content
    fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=".manifest-")
    os.fchmod(fd, 0o644)  # mkstemp makes it private; the manifest is meant to be read by all
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
