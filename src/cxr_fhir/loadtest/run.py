"""A whole run: register patients, upload from concurrent clients, verify, and count."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from . import client as http
from .markers import find_images, mark
from .model import FHIR_JSON, Config, LoadTestError, Upload, fhir_base
from .report import figures
from .verify import SEARCHED, Found, check


class LoadTest:
    def __init__(self, cfg: Config, log: Callable[[str], object] = print):
        if cfg.uploads < 1 or cfg.clients < 1 or cfg.patients < 1:
            raise LoadTestError("--uploads, --clients and --patients must be at least 1")
        self.cfg, self.log = cfg, log
        self.base = fhir_base(cfg.url)
        self.run_id = uuid.uuid4().hex[:12]
        self.images = find_images(cfg.images)
        self.headers = {"Authorization": f"Bearer {cfg.token}", "Accept": FHIR_JSON}

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=self.cfg.timeout_s)

    # -- 1. patients --------------------------------------------------------------------------------

    def register_patients(self, client: httpx.Client) -> list[str]:
        return http.register_patients(client, self.run_id, self.cfg.patients)

    # -- 2. uploads ---------------------------------------------------------------------------------

    def plan(self, patients: list[str]) -> list[tuple[Upload, bytes]]:
        """Upload i goes to patient i mod P with image i mod I, marked with run id and i."""
        out = []
        for seq in range(self.cfg.uploads):
            name, mtype, data = self.images[seq % len(self.images)]
            marked = mark(data, mtype, f"{self.run_id}:{seq}")
            out.append((Upload(seq, patients[seq % len(patients)], name, mtype,
                               hashlib.sha256(marked).hexdigest()), marked))
        return out

    def _send(self, client: httpx.Client, up: Upload, data: bytes) -> None:
        http.send(client, up, data, self.cfg.max_retries)

    def upload_all(self, work: list[tuple[Upload, bytes]]) -> float:
        """C threads, each with its own keep-alive connection, take uploads in order; wall seconds."""
        order = iter(work)
        lock = threading.Lock()
        done = itertools.count(1)
        step = max(1, len(work) // 10)

        def client_loop() -> None:
            with self._client() as client:
                while True:
                    with lock:
                        item = next(order, None)
                    if item is None:
                        return
                    self._send(client, *item)
                    n = next(done)
                    if n % step == 0:
                        self.log(f"  {n}/{len(work)} uploads answered")

        start = time.perf_counter()
        threads = [threading.Thread(target=client_loop, name=f"loadtest-{i}") for i in range(self.cfg.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    # -- 3. verification, through the FHIR API only --------------------------------------------------

    def verify(self, uploads: list[Upload], patients: list[str]) -> dict[str, Any]:
        return check(self._found(patients), uploads, self._stored_sha, self.cfg.clients)

    def _found(self, patients: list[str]) -> Found:
        """What the server has for each patient, searched with C clients."""
        def per_patient(pid: str) -> tuple[str, dict[str, list[dict[str, Any]]]]:
            with self._client() as client:
                return pid, {rtype: http.search(client, rtype, {"patient": pid}) for rtype in SEARCHED}

        with ThreadPoolExecutor(self.cfg.clients) as pool:
            return dict(pool.map(per_patient, patients))

    def _stored_sha(self, u: Upload) -> str | None:
        """The SHA-256 of the bytes the server returns for the upload's Binary (None: not readable)."""
        with self._client() as client:
            r = client.get(f"/Binary/{u.sha256}", headers={"Accept": "image/*"})
            return hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else None

    # -- all of it ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.log(f"load test {self.run_id}: {cfg.uploads} uploads, {cfg.clients} clients, {cfg.patients} patients, "
                 f"{len(self.images)} images, against {self.base}")
        t0 = time.perf_counter()
        with self._client() as client:
            patients = self.register_patients(client)
        register_s = time.perf_counter() - t0
        work = self.plan(patients)
        self.log(f"registered {len(patients)} patients in {register_s:.1f} s; uploading")
        wall_s = self.upload_all(work)
        uploads = [u for u, _ in work]
        self.log(f"uploads done in {wall_s:.1f} s; verifying through the FHIR API")
        t1 = time.perf_counter()
        checks = self.verify(uploads, patients)
        verify_s = time.perf_counter() - t1
        return figures(cfg, self.run_id, self.base, self.images, uploads, checks,
                       {"register": register_s, "upload": wall_s, "verify": verify_s})
