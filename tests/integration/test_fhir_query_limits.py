"""One read request cannot stall the server: a search's size is bounded (400 naming the limit) before
any SQL is built, and while such requests are refused, writes go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import Settings
from cxr_fhir.storage.db import writing

FHIR = "application/fhir+json"


@pytest.fixture
def fhir(tmp_path, db_url, engine) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False, _env_file=None)
    with writing(engine) as s:
        token = create_client(s, "big-searcher", ["system/*.*"], actor="test")[1]
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {token}", "Accept": FHIR}


def _too_costly(r, words: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    issue = r.json()["issue"][0]
    assert issue["code"] == "too-costly" and words in issue["diagnostics"], issue


def test_oversized_searches_are_refused_naming_the_limit(fhir):
    client, headers = fhir
    many = "&".join(f"name={i}" for i in range(5000))  # the reported attack: 49 KB, 8-11 s and a 503
    start = time.monotonic()
    _too_costly(client.get(f"/fhir/Patient?{many}", headers=headers), "query string is longer than 8192")
    assert time.monotonic() - start < 2
    _too_costly(client.get("/fhir/Patient?" + "&".join(f"name={i}" for i in range(11)), headers=headers),
                "repeated at most 10 times")
    _too_costly(client.get("/fhir/Patient?name=" + ",".join(str(i) for i in range(25)), headers=headers),
                "at most 20 values")
    _too_costly(client.get("/fhir/Patient?name=" + "x" * 600, headers=headers), "longer than 512 characters")
    _too_costly(client.get("/fhir/Patient?" + "&".join(f"p{i}=1" for i in range(70)), headers=headers),
                "at most 60 parameters")
    # The same limits inside a batch entry's search and in conditional criteria.
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?" + "&".join(f"family={i}" for i in range(11))}}]}
    entry = client.post("/fhir", json=batch, headers={**headers, "Content-Type": FHIR}).json()["entry"][0]
    assert entry["response"]["status"].startswith("400") and "repeated at most" in str(entry["response"]["outcome"])
    made = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Limit"}]},
                       headers={**headers, "Content-Type": FHIR,
                                "If-None-Exist": "family=" + ",".join(str(i) for i in range(25))})
    _too_costly(made, "at most 20 values")
    # What stays inside the limits works as before.
    ok = client.get("/fhir/Patient?" + "&".join(f"name={i}" for i in range(10)) + "&_count=5", headers=headers)
    assert ok.status_code == 200 and ok.json()["total"] == 0


def test_writes_go_on_while_oversized_searches_are_refused(fhir):
    client, headers = fhir
    many = "&".join(f"name={i}" for i in range(5000))
    stop, refused = threading.Event(), []

    def hammer() -> None:
        while not stop.is_set() and len(refused) < 200:
            refused.append(client.get(f"/fhir/Patient?{many}", headers=headers).status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        start = time.monotonic()
        for i in range(5):
            r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"W{i}"}]},
                            headers={**headers, "Content-Type": FHIR})
            assert r.status_code == 201, r.text
        assert time.monotonic() - start < 10
    finally:
        stop.set()
        worker.join()
    assert refused and set(refused) == {400}
