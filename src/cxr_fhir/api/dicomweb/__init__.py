"""DICOMweb: STOW-RS, so a PACS or a modality stores chest films by HTTP as it would by C-STORE."""

from .routes import dicomweb_router, is_dicomweb, stow_limit

__all__ = ["dicomweb_router", "is_dicomweb", "stow_limit"]
