"""The records every room speaks: the SQLModel row types and their column types (no session, no query).

Below storage (which reads and writes them) and below the pure FHIR mapping (which maps them), so
neither of those two rooms has to import the other to know what a patient or a study is."""
