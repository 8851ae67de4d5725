"""``cxr-fhir loadtest``: many uploads from concurrent clients against a running server, then proof,
through the FHIR API only, that every accepted upload is stored exactly once and intact.

Each upload carries a unique marker inside the image file (a PNG ``tEXt`` chunk or a JPEG comment:
the pixels are untouched), so its bytes, and therefore their SHA-256, identify that one upload.
The server files images by SHA-256 (``Media.content.url`` is ``Binary/<sha256>``), so a study can be
traced back to the upload that made it, and its stored bytes can be hashed against what was sent.

A 503 is honoured (wait ``Retry-After``, send again, counted); anything else that is not a 200 is an
error with its status. A transport error on the POST is not retried: the client cannot know whether
the server stored the study, and the verification then shows whether it did (``orphaned``).

The parts: ``markers`` (the marked image files), ``model`` (the run's settings and one upload's
record), ``client`` (the HTTP side: patients, uploads, searches), ``verify`` (the proof),
``report`` (the figures, their summary and the JSON file) and ``run`` (all of it in order).
"""

from __future__ import annotations

from .client import parse_server_timing
from .markers import find_images, mark, mark_jpeg, mark_png
from .model import Config, LoadTestError, Upload, fhir_base
from .report import percentiles, summary, write_json
from .run import LoadTest

__all__ = ["Config", "LoadTest", "LoadTestError", "Upload", "fhir_base", "find_images", "mark", "mark_jpeg",
           "mark_png", "parse_server_timing", "percentiles", "summary", "write_json"]
