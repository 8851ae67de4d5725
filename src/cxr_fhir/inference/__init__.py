"""The ML behind one small interface: ``Pipeline.run(XRayImage) -> Analysis``. No HTTP, no FHIR here."""
