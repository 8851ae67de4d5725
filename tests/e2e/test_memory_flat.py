"""A real `cxr-fhir serve` keeps its memory flat under large anonymous bodies: 8 parallel 200 MB
form posts to a page and 8 parallel 60 MB posts to /fhir are refused promptly, without the server
reading (or keeping) what they send."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from support.server import environment, migrate_and_token, start

MIB = 1024 * 1024
CHUNK = b"a=" + b"x" * (256 * 1024 - 2)
DEADLINE_S = 30  # per request: refused long before the body could have been sent


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post_big(port: int, path: str, ctype: str, size: int) -> tuple[int | None, float, int]:
    """Send ``size`` bytes, made on the fly, until the server answers; (status, seconds, bytes sent)."""
    start = time.monotonic()
    sent = 0
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {size}\r\n\r\n".encode())
        s.settimeout(0.2)
        while sent < size and time.monotonic() - start < DEADLINE_S:
            if select.select([s], [], [], 0)[0]:
                break  # an answer (or the close) is there: stop sending
            try:
                sent += s.send(CHUNK[:size - sent])
            except TimeoutError:
                continue  # the server is not reading: look for its answer
            except (BrokenPipeError, ConnectionResetError):
                break  # it has answered and closed: the answer may still be there to read
        s.settimeout(5)
        try:
            while b"\r\n" not in reply:
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - start, sent


def test_large_anonymous_bodies_leave_memory_flat(tmp_path):
    env = environment(tmp_path / "var", CXR_LOAD_MODELS="false")
    migrate_and_token(env)
    with open(tmp_path / "server.log", "w") as log:
        proc, base = start(env, log, ready_within_s=120)
        try:
            port = urlsplit(base).port
            assert port is not None
            # Warm-up: one of each refusal, so that lazily imported code is in memory before measuring.
            for _ in range(2):
                assert httpx.post(f"{base}/patients/anything/studies", content=b"a=1",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 403
                assert httpx.post(f"{base}/fhir/Patient", content=b"{}",
                                  headers={"Content-Type": "application/fhir+json"}).status_code == 401
            before = rss_kib(proc.pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_kib(proc.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            results: list[tuple[str, tuple[int | None, float, int]]] = []
            jobs = ([("/patients/anything/studies", "application/x-www-form-urlencoded", 200 * MIB)] * 8
                    + [("/fhir/Patient", "application/fhir+json", 60 * MIB)] * 8)

            def run(job: tuple[str, str, int]) -> None:
                results.append((job[0], post_big(port, *job)))

            threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(DEADLINE_S + 10)
            time.sleep(1)
            after = rss_kib(proc.pid)
            stop.set()
            sampler.join()
            assert proc.poll() is None
            print(f"VmRSS before {before // 1024} MiB, peak {peak[0] // 1024} MiB, after {after // 1024} MiB")
            for path, (status, seconds, sent) in results:
                print(f"  {path}: {status} after {seconds:.2f} s, {sent // 1024} KiB sent")
            assert len(results) == 16
            for path, (status, seconds, sent) in results:
                assert status in (401, 403, 413), (path, status, seconds, sent)
                assert seconds < 10, (path, seconds)
            assert after - before < 50 * 1024, (before, after)
            assert peak[0] - before < 100 * 1024, (before, peak[0])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
