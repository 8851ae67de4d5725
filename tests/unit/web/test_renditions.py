"""Browser renditions: every upload format becomes a PNG the browser can show."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cxr_fhir.imaging.display import OVERLAY_MAX_SIDE
from cxr_fhir.storage.image_store import ImageStore
from cxr_fhir.web.images import THUMB, Renditions, render
from support.images import chest_like, dicom_from_png, encode, png8


def _open(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(png))


def test_dicom_is_rendered_as_png_like_the_png_it_came_from():
    png = png8()
    dcm = dicom_from_png(png, "MRN-1")
    a = np.asarray(_open(render(png, 10**8, OVERLAY_MAX_SIDE)).convert("L"), dtype=float)
    b = np.asarray(_open(render(dcm, 10**8, OVERLAY_MAX_SIDE)).convert("L"), dtype=float)
    assert a.shape == b.shape and max(a.shape) <= OVERLAY_MAX_SIDE
    # The same picture; brightness may differ (the DICOM is shown through its window / VOI LUT).
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_thumbnail_keeps_the_aspect_ratio_and_is_cached(tmp_path):
    wide = encode((np.tile(chest_like(), (1, 2)) * 255).astype(np.uint8))
    store = ImageStore(tmp_path)
    digest = store.put(wide)
    r = Renditions(store, 10**8, capacity=1)
    img = _open(r.png(digest, THUMB))
    assert img.size[0] == THUMB and abs(img.size[0] / img.size[1] - 2) < 0.05
    store.path(digest).unlink()  # served from the cache now
    assert r.png(digest, THUMB) == r.png(digest, THUMB)
