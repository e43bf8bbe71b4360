"""Tests for the Sieve engine (txmail.sieve)."""
