"""MLLP framing (HL7 v2 over TCP): a message is <VT> payload <FS><CR>. Pure bytes, no sockets."""

from __future__ import annotations

START, END = b"\x0b", b"\x1c\x0d"
ENCODING = "utf-8"  # what MSH-18 "UNICODE UTF-8" declares


def frame(message: str) -> bytes:
    """One message, framed for the wire."""
    return START + message.encode(ENCODING) + END


def split_frames(buffer: bytes) -> tuple[list[str], bytes]:
    """The complete messages at the head of ``buffer`` and the bytes still waiting for their end.

    Bytes before a start block (line noise, a keep-alive newline) are dropped, as MLLP receivers do.
    Raises ValueError on a payload that is not UTF-8."""
    messages: list[str] = []
    while True:
        start = buffer.find(START)
        if start < 0:
            return messages, b""
        end = buffer.find(END, start + 1)
        if end < 0:
            return messages, buffer[start:]
        payload = buffer[start + 1:end]
        try:
            messages.append(payload.decode(ENCODING))
        except UnicodeDecodeError as exc:
            raise ValueError("an MLLP frame that is not UTF-8") from exc
        buffer = buffer[end + len(END):]


def unframe(data: bytes) -> str:
    """The one message in ``data`` (a whole frame). ValueError when there is no complete frame."""
    messages, _ = split_frames(data)
    if not messages:
        raise ValueError("no complete MLLP frame")
    return messages[0]
