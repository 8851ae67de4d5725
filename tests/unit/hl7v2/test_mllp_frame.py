"""MLLP framing: what goes on the wire and how a byte stream splits back into messages."""

from __future__ import annotations

import pytest

from cxr_fhir.hl7v2.mllp_frame import frame, split_frames, unframe


def test_a_frame_is_vt_payload_fs_cr_and_round_trips_utf8():
    msg = "MSH|^~\\&|A\rPID|1||Zoë"
    data = frame(msg)
    assert data[:1] == b"\x0b" and data[-2:] == b"\x1c\r" and "Zoë".encode() in data
    assert unframe(data) == msg


def test_a_stream_splits_into_whole_messages_and_keeps_the_rest():
    stream = b"\r\n" + frame("one") + frame("two") + frame("three")[:4]
    messages, rest = split_frames(stream)
    assert messages == ["one", "two"] and rest == frame("three")[:4]
    messages, rest = split_frames(rest + frame("three")[4:])
    assert messages == ["three"] and rest == b""


@pytest.mark.parametrize("data", [b"", b"no frame", frame("x")[:-1]])
def test_no_complete_frame_is_a_value_error(data):
    with pytest.raises(ValueError):
        unframe(data)


def test_a_frame_that_is_not_utf8_is_a_value_error():
    with pytest.raises(ValueError):
        split_frames(b"\x0b\xff\xfe\x1c\r")
