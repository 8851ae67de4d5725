"""The load test's per-upload markers keep the pixels and make every upload's bytes unique."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from cxr_fhir.api.fhir.analyze import server_timing
from cxr_fhir.loadtest import mark, parse_server_timing, percentiles


def _encoded(fmt: str) -> bytes:
    pixels = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def test_markers_keep_the_pixels_and_make_the_bytes_unique():
    for fmt, mtype in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        data = _encoded(fmt)
        a, b = mark(data, mtype, "run:1"), mark(data, mtype, "run:2")
        assert len({hashlib.sha256(x).hexdigest() for x in (data, a, b)}) == 3
        with Image.open(io.BytesIO(data)) as ref, Image.open(io.BytesIO(a)) as marked:
            marked.load()  # a PNG chunk with a bad CRC would fail here
            assert np.array_equal(np.asarray(ref), np.asarray(marked))
        if fmt == "PNG":
            assert Image.open(io.BytesIO(a)).text["cxr-loadtest"] == "run:1"


def test_percentiles_are_nearest_rank():
    fig = percentiles([float(i) for i in range(1, 101)])
    assert (fig["p50"], fig["p90"], fig["p99"], fig["max"], fig["n"]) == (50.0, 90.0, 99.0, 100.0, 100)
    assert percentiles([7.0])["p99"] == 7.0 and percentiles([]) is None


def test_server_timing_round_trip():
    header = server_timing({"classify_ms": 38.14, "detect_ms": 27.0, "total_ms": 70.2}, 123.45)
    assert header == "classify;dur=38.1, detect;dur=27.0, total;dur=70.2, handler;dur=123.5"
    assert parse_server_timing(header) == {"classify_ms": 38.1, "detect_ms": 27.0, "total_ms": 70.2,
                                           "handler_ms": 123.5}
    assert parse_server_timing(None) == {}
