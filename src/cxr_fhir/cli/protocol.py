"""The HTTP/1.1 protocol `serve` runs: uvicorn's h11 one, plus a deadline on request headers.

uvicorn times out idle keep-alive connections, but not a client that opens a connection and sends
its request line and headers a byte at a time (slowloris): each such connection would be held for
ever. Here the headers of every request must be complete within ``header_timeout_s`` of the first
byte (or of the connection, for the first request); past it the connection is answered 408 and
closed. Bodies have their own deadline (admission.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("cxr_fhir.access")


def with_header_timeout(header_timeout_s: float) -> type[H11Protocol]:
    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request of a kept-alive connection has begun
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            log.info("request headers too slow: connection closed", extra={"timeout_s": header_timeout_s})
            try:
                response: Any = h11.Response(status_code=408, headers=[(b"connection", b"close"),
                                                                       (b"content-length", b"0")])
                self.transport.write(self.conn.send(response) + (self.conn.send(h11.EndOfMessage()) or b""))
            except h11.LocalProtocolError:
                pass  # nothing can be said on this connection any more: just close it
            self.transport.close()

    return HeaderDeadlineProtocol
