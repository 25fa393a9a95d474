"""Tests of the wasi:http test components (tests/fixtures/http)."""
