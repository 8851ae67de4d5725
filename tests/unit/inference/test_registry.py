import hashlib
import json

import pytest

from cxr_fhir.inference.registry import ModelRegistryError, read_manifest, verified_file, write_manifest_section


def test_sections_are_replaced_independently(tmp_path):
    write_manifest_section(tmp_path, "classifier", {"version": "1"})
    write_manifest_section(tmp_path, "detector", {"version": "a"})
    write_manifest_section(tmp_path, "classifier", {"version": "2"})
    manifest = read_manifest(tmp_path)
    assert manifest["classifier"] == {"version": "2"} and manifest["detector"] == {"version": "a"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_hash_is_checked_before_use(tmp_path):
    blob = tmp_path / "model.pt"
    blob.write_bytes(b"weights")
    entry = {"path": "model.pt", "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert verified_file(tmp_path, entry) == blob
    blob.write_bytes(b"tampered")
    with pytest.raises(ModelRegistryError, match="corrupt"):
        verified_file(tmp_path, entry)


def test_paths_outside_the_weights_folder_are_refused(tmp_path):
    (tmp_path / "outside.pt").write_bytes(b"x")
    inner = tmp_path / "weights"
    inner.mkdir()
    with pytest.raises(ModelRegistryError, match="outside"):
        verified_file(inner, {"path": "../outside.pt", "sha256": "0" * 64})


def test_missing_or_broken_manifest_says_so(tmp_path):
    with pytest.raises(ModelRegistryError, match="no model manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelRegistryError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1}))
    assert read_manifest(tmp_path) == {"schema": 1}
