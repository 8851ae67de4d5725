"""cxr-fhir: AI chest X-ray assistant that speaks FHIR R4."""
