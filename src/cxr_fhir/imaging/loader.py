"""The one image loader: PNG, JPEG (8/16 bit, grey or RGB) and DICOM, sniffed from the bytes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .dicom import decode_dicom
from .errors import ImageRejected
from .image import (
    DEFAULT_MAX_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
    XRayImage,
    check_geometry,
    stretch,
)

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_CHROMA", "MAX_SIDE", "MIN_SIDE", "XRayImage", "check_geometry", "load",
           "load_path", "sniff", "stretch"]

# Mean absolute difference between colour channels (0..1) above which an RGB file is a colour photo.
MAX_CHROMA = 0.04


def sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "application/dicom"
    raise ImageRejected("not-an-image", "the file is not a PNG, JPEG or DICOM image")


def load(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> XRayImage:
    """Decode and validate. Raises ImageRejected with a specific reason; never anything else.

    ``min_side`` is lowered only by training readers for the 64 px NIH set.
    """
    if not data:
        raise ImageRejected("empty", "the file is empty")
    media_type = sniff(data)
    try:
        if media_type == "application/dicom":
            image = decode_dicom(data, max_pixels, min_side)
        else:
            image = _decode_raster(data, media_type, max_pixels, min_side)
    except ImageRejected:
        raise
    except Exception as exc:  # decoders raise many types on corrupt input; all mean the same here
        raise ImageRejected("corrupt", f"the image could not be decoded ({type(exc).__name__})") from exc
    check_geometry(image.width, image.height, max_pixels, min_side)
    if not np.isfinite(image.pixels).all():
        raise ImageRejected("corrupt", "the image holds values that are not numbers (broken rescale or pixel data)")
    if float(image.pixels.std()) < 0.01:
        raise ImageRejected("blank", "the image is blank (no contrast)")
    return image


def load_path(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> XRayImage:
    return load(Path(path).read_bytes(), max_pixels, min_side)


def _decode_raster(data: bytes, media_type: str, max_pixels: int, min_side: int) -> XRayImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageRejected("too-large", "the image is too large (decompression bomb guard)") from exc
        # The header alone gives the size: refuse bombs before allocating anything.
        check_geometry(*im.size, max_pixels, min_side)
        if getattr(im, "n_frames", 1) > 1:
            raise ImageRejected("multi-frame", "the file holds several frames; upload one radiograph")
        im.load()
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        bits = 16
        # 12-bit detectors often write into 16-bit containers: stretch the values actually used.
        pixels = stretch(np.asarray(im, dtype=np.float32))
    elif mode in ("L", "LA", "1"):
        pixels = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        bits = 8
    elif mode in ("RGB", "RGBA", "CMYK", "YCbCr", "P", "PA"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        # Colourfulness from a small copy: the full-size difference arrays would cost gigabytes.
        small = rgb[:: max(1, rgb.shape[0] // 256), :: max(1, rgb.shape[1] // 256)]
        chroma = float(np.mean(np.abs(small - small.mean(axis=2, keepdims=True))))
        if chroma > MAX_CHROMA:
            raise ImageRejected("colour-photograph",
                                "this is a colour image, not a radiograph (radiographs are greyscale)")
        pixels = rgb.mean(axis=2)
        bits = 8
    else:
        raise ImageRejected("unsupported-format", f"unsupported pixel format {mode}")
    return XRayImage(pixels=np.ascontiguousarray(pixels, dtype=np.float32), media_type=media_type, bits=bits)
