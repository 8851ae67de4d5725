import hashlib
import os

import pytest

from cxr_fhir.storage.image_store import ImageStore


def test_put_is_content_addressed_and_idempotent(tmp_path):
    store = ImageStore(tmp_path / "img")
    data = b"\x89PNG fake bytes"
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get(digest) == data and store.exists(digest)
    assert store.put(data) == digest
    files = [p for p in (tmp_path / "img").rglob("*") if p.is_file()]
    assert len(files) == 1 and not files[0].name.startswith(".tmp-")


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 63, "A" * 64, "g" * 64, ""])
def test_only_digests_name_files(tmp_path, bad):
    with pytest.raises(ValueError):
        ImageStore(tmp_path).path(bad)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put(b"data")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
