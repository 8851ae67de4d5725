"""A real MLLP receiver (a RIS stand-in) for the tests: a threaded TCP server speaking MLLP framing
(0x0B message 0x1C 0x0D), answering each message with an HL7 v2 ACK (AA, AE or AR, as scripted),
recording what it received. Stoppable and restartable on the same port (a RIS that goes down and
comes back). Written from the MLLP and HL7 v2 texts, sharing no code with what it tests.

Like a real RIS it notices duplicates by MSH-10 (the message control id): every message is recorded
(``received``) and acknowledged, but ``processed`` counts each control id once.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from support.server import free_port

START, END = b"\x0b", b"\x1c\x0d"


@dataclass(frozen=True)
class Received:
    control_id: str
    text: str
    ack: str | None  # the code answered; None when no answer was sent (silent, or the sender went away)
    duplicate: bool


def _msh_fields(text: str) -> list[str]:
    msh = text.split("\r", 1)[0]
    if not msh.startswith("MSH"):
        raise ValueError("no MSH segment")
    # MSH-1 is the field separator itself: fields[n] below is MSH-n.
    return ["MSH", msh[3], *msh[4:].split(msh[3])]


def ack_for(text: str, code: str, note: str = "", control_id: str | None = None, error_code: str = "") -> str:
    """The original-mode ACK of ``text`` (HL7 v2.5.1 §2.9.2): MSA-1 the code, MSA-2 its MSH-10, and
    an ERR segment with ERR-3 ``error_code`` (HL7 table 0357) when given."""
    f = _msh_fields(text)
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    msh = "|".join(["MSH", "^~\\&", f[5], f[6], f[3], f[4], now, "", "ACK^R01^ACK", f"ACK{time.time_ns()}",
                    "P", "2.5.1"])
    msa = "|".join(["MSA", code, control_id if control_id is not None else f[10], note])
    err = ["|".join(["ERR", "", "", f"{error_code}^{note}^HL70357", "E"])] if error_code else []
    return "\r".join([msh, msa, *err]) + "\r"


class MllpReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host, self.port = host, port or free_port()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.script: deque[str] = deque()  # codes for the next messages; "AA" once it is empty
        self.default = "AA"
        self.note = ""
        self.error_code = ""  # ERR-3 of every non-AA answer (HL7 table 0357), when set
        self.wrong_control_id = False
        self.hold_s = 0.0  # wait before answering (a slow RIS; a sender killed meanwhile)
        self.silent = False  # read, never answer (the sender times out)
        self.arrived = threading.Event()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # -- configuration --------------------------------------------------------------------
    def answer_with(self, *codes: str, then: str = "AA", note: str = "") -> None:
        """The next messages are answered with ``codes`` in turn, then always ``then``."""
        with self.lock:
            self.script = deque(codes)
            self.default, self.note = then, note

    # -- the server -----------------------------------------------------------------------
    def start(self) -> MllpReceiver:
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                receiver._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: connections are refused until ``start`` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buffer = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while START in buffer and END in buffer[buffer.index(START):]:
                    start = buffer.index(START)
                    end = buffer.index(END, start)
                    text, buffer = buffer[start + 1:end].decode("utf-8"), buffer[end + 2:]
                    self._answer(conn, text)
        except OSError:
            return

    def _answer(self, conn: socket.socket, text: str) -> None:
        control_id = _msh_fields(text)[10]
        with self.lock:
            code = self.script.popleft() if self.script else self.default
            duplicate = any(r.control_id == control_id for r in self.received)
            index = len(self.received)
            self.received.append(Received(control_id, text, None, duplicate))
        self.arrived.set()
        if self.silent:
            return
        if self.hold_s:
            time.sleep(self.hold_s)
        reply = ack_for(text, code, self.note, "WRONG-ID" if self.wrong_control_id else None,
                        self.error_code if code != "AA" else "")
        try:
            conn.sendall(START + reply.encode("utf-8") + END)
            sent: str | None = code
        except OSError:
            sent = None
        with self.lock:
            self.received[index] = Received(control_id, text, sent, duplicate)

    # -- what arrived ---------------------------------------------------------------------
    def control_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(r.control_id for r in self.received)

    def processed(self) -> Counter[str]:
        """Messages the RIS acted on: each control id once (later copies are duplicates)."""
        with self.lock:
            return Counter(r.control_id for r in self.received if not r.duplicate)

    def accepted(self) -> Counter[str]:
        """AA answers sent, per control id."""
        with self.lock:
            return Counter(r.control_id for r in self.received if r.ack == "AA")


@pytest.fixture
def mllp() -> Iterator[MllpReceiver]:
    receiver = MllpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
