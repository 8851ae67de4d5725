"""Persistence: engine and sessions, tables, repositories, the image store, migrations."""
