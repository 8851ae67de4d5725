"""Application services: the use cases that join imaging, inference, domain and storage."""
