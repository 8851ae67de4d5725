"""Rules for text that people and systems send us: the one control-character check."""

from __future__ import annotations

import unicodedata


def has_control(text: str, allowed: str = "") -> bool:
    """A control character (C0, DEL or C1, Unicode category Cc) other than those ``allowed``: no
    name, MRN, id or search term holds one, SQLite ends text at U+0000, PostgreSQL refuses it
    outright, and C1's CSI (U+009B) drives terminals like ESC [ does."""
    return any(unicodedata.category(c) == "Cc" and c not in allowed for c in text)


def escape_control(text: str) -> str:
    """The text with each control character written as \\xNN / \\uNNNN, for logs and audit rows."""
    if not has_control(text):
        return text
    return "".join(c if unicodedata.category(c) != "Cc" else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
