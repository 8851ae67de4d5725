"""Pure DICOM objects for what cxr-fhir sends to the PACS: the TID 1500 SR, the Secondary Capture of
the overlay, and the deterministic UIDs that make a retried delivery the same object. No network,
no database: rows and a source dataset in, pydicom Datasets out."""
