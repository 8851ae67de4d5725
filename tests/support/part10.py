"""A dataset through bytes, as a PACS stores and serves it (DICOM Part 10 file format)."""

from __future__ import annotations

import io

import pydicom
from pydicom import Dataset


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(encoded(ds)))
