"""FHIR R4 (4.0.1) on the wire, built and parsed with fhir.resources.R4B: mapping, providers, routes."""
