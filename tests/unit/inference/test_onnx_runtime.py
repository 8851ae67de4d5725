"""The onnxruntime runtime's own parts: choosing it, and ultralytics' pre/post-processing redone in numpy."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch

from cxr_fhir.inference.onnx_runtime import OnnxDetector, _nms, choose, unusable
from cxr_fhir.inference.registry import ModelRegistryError, read_manifest, write_manifest_section
from cxr_fhir.settings import PROJECT_ROOT

ENTRY = {"files": [{"path": "a.pt", "sha256": "1" * 64}]}


def _exported(source: str) -> dict:
    return {**ENTRY, "runtimes": {"onnxruntime": {"files": [{"path": "a.onnx", "sha256": "2" * 64}],
                                                  "source_sha256": [source]}}}


def test_auto_takes_onnxruntime_only_when_exported_from_the_registered_weights():
    assert choose(ENTRY, "auto", "classifier") == "torch"
    assert choose(_exported("1" * 64), "auto", "classifier") == "onnxruntime"
    assert choose(_exported("1" * 64), "torch", "classifier") == "torch"
    stale = _exported("3" * 64)  # the torch weights were retrained after the export
    assert "other weights" in (unusable(stale) or "")
    assert choose(stale, "auto", "classifier") == "torch"
    with pytest.raises(ModelRegistryError, match="other weights"):
        choose(stale, "onnxruntime", "classifier")
    with pytest.raises(ModelRegistryError, match="models export"):
        choose(ENTRY, "onnxruntime", "detector")
    with pytest.raises(ValueError):
        choose(ENTRY, "tensorrt", "detector")


def test_nms_keeps_what_torchvision_keeps():
    import torchvision

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (400, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0.1, 1, 400).astype(np.float32)
    for iou in (0.3, 0.7):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
        assert _nms(boxes, scores, iou).tolist() == want.tolist()


@pytest.fixture
def detector(tmp_path) -> OnnxDetector:
    from cxr_fhir.inference.ultralytics_offline import configure

    configure(tmp_path)
    d = object.__new__(OnnxDetector)  # no graph needed for the geometry
    d.size, d.stride, d.dynamic = 384, 32, True
    return d


@pytest.mark.parametrize("shape", [(1024, 1024), (900, 1200), (1300, 1000), (333, 517)])
def test_letterbox_and_box_scaling_are_ultralytics(detector, shape):
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.ops import scale_boxes

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, shape, dtype=np.uint8)
    want = LetterBox(384, auto=True, stride=32)(image=np.repeat(grey[..., None], 3, axis=2))
    got = detector.letterbox(grey)
    assert got.shape == (1, 3, *want.shape[:2])
    assert np.array_equal(got[0, 0], want[..., 0].astype(np.float32) / np.float32(255.0))
    boxes = np.array([[10.5, 20.25, 200.0, 300.0], [-5.0, 0.0, 500.0, 390.0]], dtype=np.float32)
    expected = scale_boxes(want.shape[:2], torch.from_numpy(boxes.copy()), shape).numpy()
    assert np.allclose(detector._scale(boxes, want.shape[:2], shape), expected, atol=1e-3)


def test_exported_cams_are_the_torch_grad_cams(tmp_path):
    """With random weights too: the closed-form map of the exported graph is Grad-CAM."""
    from cxr_fhir.inference.classifier import Classifier
    from cxr_fhir.inference.export import export_classifier
    from cxr_fhir.inference.onnx_runtime import OnnxClassifier

    entry = copy.deepcopy(read_manifest(PROJECT_ROOT / "weights")["classifier"])
    entry.pop("runtimes", None)
    entry["input_size"] = 96
    import timm

    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=len(entry["outputs"]))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    entry["files"] = [{"path": "m.pt", "sha256": hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()}]
    write_manifest_section(tmp_path, "classifier", entry)
    export_classifier(tmp_path, threads=1)
    registered = read_manifest(tmp_path)["classifier"]
    assert unusable(registered) is None and registered["runtimes"]["onnxruntime"]["files"][0]["path"] == "m.onnx"
    yy, xx = np.mgrid[0:300, 0:260] / 300.0
    pixels = (0.5 + 0.3 * np.sin(9 * xx) * np.cos(5 * yy)).astype(np.float32)
    want = Classifier(tmp_path, registered, precision="float32").predict(pixels)
    got = OnnxClassifier(tmp_path, registered, threads=1).predict(pixels)
    assert want.ranked == got.ranked
    assert max(abs(want.outputs[k] - got.outputs[k]) for k in want.outputs) < 1e-5
    for finding, cam in want.cams.items():
        assert np.allclose(cam, got.cams[finding], atol=1e-4)
