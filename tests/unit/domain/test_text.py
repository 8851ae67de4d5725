"""The one control-character rule: C0, DEL and C1 alike (C1's CSI drives terminals as ESC [ does)."""

from cxr_fhir.domain.text import escape_control, has_control


def test_c0_del_and_c1_are_control_characters():
    for c in ("\x00", "\x1b", "\x7f", "\x85", "\x9b"):
        assert has_control(f"a{c}b"), repr(c)
    assert not has_control("Nguyễn Thị Minh 🌸 O'Brien-Smith")


def test_allowed_characters_pass_and_others_do_not():
    assert not has_control("line one\r\nline\ttwo", allowed="\t\r\n")
    assert has_control("line one\r\n\x9b2J", allowed="\t\r\n")


def test_escaped_text_holds_no_control_character_and_keeps_the_rest():
    escaped = escape_control("dr.a\x1b[2J\x9b2Jzoë\u2028")
    assert not has_control(escaped)
    assert escaped == "dr.a\\x1b[2J\\x9b2Jzoë\u2028"
