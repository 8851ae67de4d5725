"""Bytes -> a validated, normalised radiograph with its metadata, or a rejection with a reason."""

from .errors import ImageRejected
from .image import XRayImage
from .loader import load, load_path

__all__ = ["ImageRejected", "XRayImage", "load", "load_path"]
