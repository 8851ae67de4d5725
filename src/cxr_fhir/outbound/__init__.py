"""Delivery of reports to the hospital EHR: HTTP client with auth, outbox worker, status and retry."""
