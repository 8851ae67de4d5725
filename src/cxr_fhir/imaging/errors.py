"""The imaging room's refusal: one kind of the taxonomy's Refused."""

from ..domain.errors import Refused


class ImageRejected(Refused):
    """The file is not an acceptable chest radiograph. ``code`` is stable, ``reason`` is for people."""
