"""The storage-mode tests use the storages of tests/conftest.py (``storage_url``)."""
