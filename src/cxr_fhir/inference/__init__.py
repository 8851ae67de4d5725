"""The ML behind one small interface: ``Pipeline.run(XRayImage) -> AnalysisResult``. No HTTP, no FHIR here."""
