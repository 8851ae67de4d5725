"""dciodvfy (dicom3tools, the reference IOD validator) as a function: the error lines it reports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydicom import Dataset

DCIODVFY = "/usr/bin/dciodvfy"


def available() -> bool:
    return Path(DCIODVFY).exists() or shutil.which("dciodvfy") is not None


needs_dciodvfy = pytest.mark.skipif(not available(), reason="dciodvfy (Debian dicom3tools) is not installed")


def _run(path: Path) -> list[str]:
    exe = DCIODVFY if Path(DCIODVFY).exists() else (shutil.which("dciodvfy") or DCIODVFY)
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return (done.stderr + done.stdout).splitlines()


def dciodvfy_lines(ds_or_path: Dataset | str | Path) -> list[str]:
    """Everything dciodvfy says about a dataset (written to a temporary Part 10 file) or a file."""
    if isinstance(ds_or_path, Dataset):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object.dcm"
            ds_or_path.save_as(path, enforce_file_format=True)
            return _run(path)
    return _run(Path(ds_or_path))


def dciodvfy_errors(ds_or_path: Dataset | str | Path) -> list[str]:
    """The lines dciodvfy marks as errors (it writes them to stderr, starting "Error")."""
    return [line for line in dciodvfy_lines(ds_or_path) if line.startswith("Error")]


def dciodvfy_warnings(ds_or_path: Dataset | str | Path) -> list[str]:
    return [line for line in dciodvfy_lines(ds_or_path) if line.startswith("Warning")]
