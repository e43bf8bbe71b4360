"""Tests of the PostgreSQL backends, against a throwaway cluster (tests/_postgres.py)."""
