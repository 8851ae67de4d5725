"""The whole inference pipeline with the committed default weights, on real radiographs."""

from __future__ import annotations

import io
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from cxr_fhir.domain.findings import FINDING_NAMES
from cxr_fhir.imaging import ImageRejected, load_path
from cxr_fhir.inference.pipeline import Pipeline
from cxr_fhir.inference.registry import ModelRegistryError, read_manifest
from cxr_fhir.services.analysis import prioritise
from cxr_fhir.settings import PROJECT_ROOT

WEIGHTS = PROJECT_ROOT / "weights"


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(WEIGHTS, tmp_path_factory.mktemp("runtime"), threads=2)


@pytest.fixture(scope="session")
def original(shared_data):
    return sorted((shared_data / "nih" / "originals").glob("*.png"))[0]


def test_full_result_for_a_real_1024px_radiograph(pipeline, original):
    image = load_path(original)
    assert (image.width, image.height) == (1024, 1024)
    a = pipeline.run(image)
    assert list(a.probabilities) == list(FINDING_NAMES)
    assert all(0.0 <= p <= 1.0 for p in a.probabilities.values())
    probs = [t.probability for t in a.top3]
    assert len(a.top3) == 3 and probs == sorted(probs, reverse=True)
    assert probs[0] == max(a.probabilities.values())
    # The triage is the service's, applied to the pipeline's result (the pipeline knows no triage).
    assert prioritise(a, pipeline.thresholds, image).priority in {"routine", "urgent", "stat"}
    for box in a.boxes:
        assert box.finding in FINDING_NAMES and box.source in {"detector", "heatmap"}
        assert 0 <= box.x1 < box.x2 <= 1024 and 0 <= box.y1 < box.y2 <= 1024
    assert set(a.overlays) == {t.finding for t in a.top3}
    overlay = Image.open(io.BytesIO(a.overlays[a.top3[0].finding]))
    assert overlay.size == (512, 512) and overlay.mode == "RGB"
    assert a.model.manifest_sha256 and a.model.name == "cxr-fhir-classifier"
    assert all(a.heatmaps[k].max() <= 1.0 for k in a.heatmaps)


def test_same_image_same_answer(pipeline, original):
    first = pipeline.run(load_path(original)).probabilities
    assert pipeline.run(load_path(original)).probabilities == first


def test_pipeline_runs_with_the_network_blocked(monkeypatch, tmp_path, original):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during inference")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = Pipeline(WEIGHTS, tmp_path, threads=2)  # loading, warm-up and a real run, all offline
    assert len(fresh.run(load_path(original)).probabilities) == 14


def test_corrupt_weight_file_is_refused_with_a_reason(tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS, weights)
    victim = weights / read_manifest(weights)["classifier"]["files"][0]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ModelRegistryError, match="corrupt or not the registered one"):
        Pipeline(weights, tmp_path, threads=1)
    victim.unlink()
    with pytest.raises(ModelRegistryError, match="missing"):
        Pipeline(weights, tmp_path, threads=1)


def _skimage_samples() -> dict[str, np.ndarray]:
    """Non-chest greyscale images shipped inside scikit-image (no download)."""
    import skimage.data as data

    out = {}
    for name in ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "checkerboard", "clock",
                 "horse", "cell", "shepp_logan_phantom", "binary_blobs"):
        try:
            img = np.asarray(getattr(data, name)(), dtype=np.float32)
        except Exception:  # noqa: BLE001 - a sample that needs a download is simply not measured
            continue
        out[name] = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    return out


def test_plausibility_gate_on_non_chest_and_real_chest_images(pipeline, shared_data):
    from cxr_fhir.imaging.plausibility import check_chest_radiograph

    samples = _skimage_samples()
    assert len(samples) >= 8
    rejected = []
    for name, img in samples.items():
        try:
            check_chest_radiograph(img, pipeline.gate)
        except ImageRejected:
            rejected.append(name)
    chests = sorted((shared_data / "nih" / "originals").glob("*.png")) + \
        sorted((shared_data / "kermany" / "train" / "NORMAL").glob("*.jpeg"))[:20]
    for path in chests:
        check_chest_radiograph(load_path(path).pixels, pipeline.gate)
    print(f"plausibility gate: rejected {len(rejected)}/{len(samples)} non-chest images; "
          f"accepted {len(chests)}/{len(chests)} chest radiographs; passed: {sorted(set(samples) - set(rejected))}")
    assert len(rejected) >= len(samples) - 2
