"""Rules for text that people and systems send us."""

from __future__ import annotations

import unicodedata


def has_control(text: str) -> bool:
    """A control character (C0, DEL or C1): no name, MRN or search term holds one, SQLite ends text
    at U+0000 and PostgreSQL refuses it outright."""
    return any(unicodedata.category(c) == "Cc" for c in text)
