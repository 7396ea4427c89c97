"""Support code shared by tests/ and bench/ (not shipped in the package)."""
