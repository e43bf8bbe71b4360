"""Tests of txmail.testing (the in-process test server) and MemoryDirectory."""
