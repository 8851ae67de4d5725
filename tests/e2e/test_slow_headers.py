"""Slowloris: a client trickling its request headers (or sending nothing) does not hold a connection of
the real server for ever: past CXR_HEADER_TIMEOUT_S it is answered 408 and closed; a slow but timely
client is served."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from support.server import environment, migrate_and_token, serving


def _connect(base: str) -> socket.socket:
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(4096)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_slow_headers_are_cut_off_and_timely_ones_served(tmp_path):
    env = environment(tmp_path / "var", CXR_LOAD_MODELS="false", CXR_HEADER_TIMEOUT_S="1")
    migrate_and_token(env)
    with serving(env, tmp_path / "server.log", ready_within_s=120) as base:
        trickle = _connect(base)
        start = time.monotonic()
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: cxr\r\n")  # the blank line never comes
        answer = _read_all(trickle)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.8 < time.monotonic() - start < 5
        trickle.close()

        silent = _connect(base)
        start = time.monotonic()
        assert _read_all(silent).startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5
        silent.close()

        timely = _connect(base)
        timely.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.4)
        timely.sendall(b"Host: cxr\r\nConnection: close\r\n\r\n")
        assert _read_all(timely).startswith(b"HTTP/1.1 200")
        timely.close()
