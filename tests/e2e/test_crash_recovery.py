"""A server killed (SIGKILL) in the middle of uploads: after the restart every study is complete
(analysed, with its report) or visibly failed with the reason, and every stored row has its file."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from sqlmodel import Session, select

from cxr_fhir.records.tables import Report, Study
from cxr_fhir.storage.db import make_engine
from cxr_fhir.storage.image_store import ImageStore
from support.server import environment, migrate_and_token, serving, start

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_kill_during_uploads_then_restart_leaves_no_study_half_done(tmp_path, shared_data):
    env = environment(tmp_path / "var", CXR_ANALYSIS_TIMEOUT_S="10")
    token = migrate_and_token(env)
    images = sorted((shared_data / "nih" / "originals").glob("*.png"))[:8]
    auth = {"Authorization": f"Bearer {token}"}

    with open(tmp_path / "first.log", "w") as log:
        proc, base = start(env, log)
        body = {"resourceType": "Patient", "name": [{"family": "Crash"}]}
        pid = httpx.post(f"{base}/fhir/Patient", json=body, headers={**auth, "Content-Type": "application/fhir+json"}
                         ).json()["id"]

        def upload(path):
            try:
                httpx.post(f"{base}/fhir/ImagingStudy/$analyze", params={"subject": f"Patient/{pid}"},
                           content=path.read_bytes(), headers={**auth, "Content-Type": "image/png"}, timeout=60)
            except httpx.TransportError:
                pass  # the server died under this request: that is the point

        threads = [threading.Thread(target=upload, args=(p,)) for p in images]
        for t in threads:
            t.start()
        # Kill once one study is analysed and at least two are stored and still waiting (the models
        # take one image at a time), however fast this machine is.
        engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'cxr-fhir.db'}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with Session(engine) as s:
                states = [st.status for st in s.exec(select(Study)).all()]
            if "analyzed" in states and sum(x in ("queued", "analyzing") for x in states) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for t in threads:
            t.join(timeout=60)

    with Session(engine) as s:
        before = {st.id: st.status for st in s.exec(select(Study)).all()}
    assert any(status != "analyzed" for status in before.values()), \
        f"no study was in flight at the kill; the test proved nothing: {before}"
    time.sleep(11)  # older than CXR_ANALYSIS_TIMEOUT_S: whatever is still queued was interrupted

    with serving(env, tmp_path / "second.log"):
        deadline = time.monotonic() + 30
        while True:
            with Session(engine) as s:
                studies = s.exec(select(Study)).all()
                reports = {r.study_id for r in s.exec(select(Report)).all()}
            if all(st.status in ("analyzed", "failed") for st in studies) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    store = ImageStore(tmp_path / "var" / "images")
    summary = {st.id: (before[st.id], st.status, st.failure_reason) for st in studies}
    assert all(st.status in ("analyzed", "failed") for st in studies), json.dumps(summary)
    for st in studies:
        assert store.exists(st.content_sha256), "a study row without its file"
        if st.status == "analyzed":
            assert st.id in reports, "an analysed study without its report"
        else:
            assert "interrupted" in st.failure_reason
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    engine.dispose()
