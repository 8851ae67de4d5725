"""The DIMSE adapter: a DICOM Storage SCP that files each received instance as an upload."""

from .scp import StorageSCP

__all__ = ["StorageSCP"]
