"""Unique markers inside the image file: the pixels stay, the bytes (and their SHA-256) differ."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .model import LoadTestError

MARKER_KEY = b"cxr-loadtest"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def mark_png(data: bytes, marker: str) -> bytes:
    """The PNG with a ``tEXt`` chunk ``cxr-loadtest=<marker>`` right after IHDR (pixels unchanged)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise LoadTestError("not a PNG file")
    ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
    body = b"tEXt" + MARKER_KEY + b"\x00" + marker.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def mark_jpeg(data: bytes, marker: str) -> bytes:
    """The JPEG with a COM segment holding the marker right after SOI (pixels unchanged)."""
    if data[:2] != b"\xff\xd8":
        raise LoadTestError("not a JPEG file")
    text = MARKER_KEY + b"=" + marker.encode("latin-1")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def mark(data: bytes, media_type: str, marker: str) -> bytes:
    return mark_png(data, marker) if media_type == "image/png" else mark_jpeg(data, marker)


def find_images(items: list[str]) -> list[tuple[str, str, bytes]]:
    """(name, media type, bytes) for each PNG/JPEG file given, or found directly in a folder given."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise LoadTestError(f"{p}: only PNG and JPEG files can carry a marker")
            paths.append(p)
        else:
            raise LoadTestError(f"{p}: no such file or folder")
    if not paths:
        raise LoadTestError("no PNG or JPEG images found in " + " ".join(items))
    return [(p.name, IMAGE_SUFFIXES[p.suffix.lower()], p.read_bytes()) for p in paths]
