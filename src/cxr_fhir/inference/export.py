"""torch -> ONNX for onnxruntime: every classifier member and the detector, recorded in the manifest.

The graphs are written beside the torch weights and registered under each model's
``runtimes.onnxruntime`` with their SHA-256, the hashes of the torch weights they were made from,
the opset and the package versions. Each export is checked against torch (float32) before it is
registered.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifier import Classifier
from .onnx_runtime import RUNTIME, OnnxDetector, session
from .registry import ModelRegistryError, read_manifest, verified_file, write_manifest_section

OPSET = 17


class _LogitsAndCams(torch.nn.Module):
    """A timm classifier with two outputs: its logits, and the class activation map of every output."""

    def __init__(self, model: Any):
        super().__init__()
        pool, head = model.global_pool, model.get_classifier()
        if getattr(pool, "pool_type", None) != "avg" or not isinstance(head, torch.nn.Linear):
            raise ModelRegistryError("heatmaps without gradients need a global-average-pool + linear head; "
                                     f"this model has {pool} and {head}")
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        weight = self.model.get_classifier().weight
        cams = torch.nn.functional.conv2d(features, weight[:, :, None, None])
        return self.model.forward_head(features), cams


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {"opset": OPSET, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "precision": "float32"}


def _probe(size: int, chans: int) -> np.ndarray:
    """A smooth radiograph-like test input, normalised like the real ones."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) - 0.5) / 0.25
    return np.repeat(img[None, None].astype(np.float32), chans, axis=1)


def export_classifier(weights_dir: Path, threads: int = 2) -> dict[str, Any]:
    """Export each member; returns (and registers) the classifier's onnxruntime entry."""
    weights_dir = Path(weights_dir)
    entry = read_manifest(weights_dir)["classifier"]
    reference = Classifier(weights_dir, entry, precision="float32")
    chans = int(entry.get("in_chans", 1))
    probe = _probe(reference.size, chans)
    files, worst = [], 0.0
    for file_entry, member in zip(entry["files"], reference.members, strict=True):
        target = weights_dir / (Path(file_entry["path"]).stem + ".onnx")
        wrapper = _LogitsAndCams(member.to(memory_format=torch.contiguous_format)).eval()
        fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=".export-", suffix=".onnx")
        os.close(fd)
        try:
            # The TorchScript exporter (deprecated in torch, still exact here: checked just below);
            # the torch.export-based one needs onnxscript, which nothing else here needs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(wrapper, (torch.from_numpy(probe),), tmp, input_names=["image"],
                                  output_names=["logits", "cams"], opset_version=OPSET, dynamo=False,
                                  do_constant_folding=True)
            wrapper.eval()
            with torch.no_grad():
                want = [t.numpy() for t in wrapper(torch.from_numpy(probe))]
            got = session(Path(tmp), threads).run(["logits", "cams"], {"image": probe})
            diff = max(float(np.abs(w - g).max()) for w, g in zip(want, got, strict=True))
            if diff > 1e-3:
                raise ModelRegistryError(f"the ONNX graph of {file_entry['path']} differs from torch by {diff:.2g}")
            worst = max(worst, diff)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        files.append({"path": target.name, "sha256": _sha256(target)})
    exported = {"files": files, "source_sha256": [f["sha256"] for f in entry["files"]],
                "inputs": {"image": [1, chans, reference.size, reference.size]}, "outputs": ["logits", "cams"],
                **_versions(), "export_check_max_abs_diff": float(f"{worst:.3g}")}
    _register(weights_dir, "classifier", exported)
    return exported


def export_detector(weights_dir: Path, runtime_dir: Path, threads: int = 2) -> dict[str, Any]:
    """Export the YOLO detector with ultralytics' own exporter (offline); returns its onnxruntime entry."""
    from .ultralytics_offline import configure

    weights_dir = Path(weights_dir)
    entry = read_manifest(weights_dir)["detector"]
    source = verified_file(weights_dir, entry["files"][0])
    configure(runtime_dir)
    from ultralytics.models import YOLO

    target = weights_dir / (source.stem + ".onnx")
    with tempfile.TemporaryDirectory(dir=weights_dir, prefix=".export-") as work:
        copy = Path(work) / source.name  # ultralytics writes beside its input: not in weights/ directly
        shutil.copyfile(source, copy)
        written = YOLO(str(copy), task="detect").export(
            format="onnx", imgsz=int(entry["input_size"]), dynamic=True, simplify=False, opset=OPSET,
            half=False, nms=False, batch=1, device="cpu", verbose=False)
        _store_half(Path(written))
        os.chmod(written, 0o644)
        os.replace(written, target)
    exported = {"files": [{"path": target.name, "sha256": _sha256(target)}],
                "source_sha256": [f["sha256"] for f in entry["files"]], "input": "images", "dynamic": True,
                "stride": 32, "iou": 0.7, "max_det": 300, **_versions(), "stored": "float16 weights, float32 compute"}
    _register(weights_dir, "detector", exported)
    # Load it the way the pipeline will, so a graph that cannot run is found now.
    OnnxDetector(weights_dir, read_manifest(weights_dir)["detector"], threads)
    return exported


def _store_half(path: Path) -> None:
    """Store the graph's large float32 weights as float16, cast back to float32 when the session loads.

    The detector's torch weights are kept in float16 (ultralytics saves them so); its graph, stored
    in float32, would double the files' size for no precision the weights ever had. onnxruntime
    folds the casts away at load: the computation stays float32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(init)
        half = weights.astype(np.float16)
        if weights.size < 256 or not np.isfinite(half).all():
            continue
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(half, init.name + "__float16"))
        casts.append(helper.make_node("Cast", [init.name + "__float16"], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _register(weights_dir: Path, name: str, exported: dict[str, Any]) -> None:
    """Set one model's ``runtimes.onnxruntime``, re-reading its section just before writing it."""
    entry = read_manifest(weights_dir)[name]
    entry.setdefault("runtimes", {})[RUNTIME] = exported
    write_manifest_section(weights_dir, name, entry)
