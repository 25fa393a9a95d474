"""Unit tests of the test infrastructure in tests/support and scripts/fetch_containerd.py."""
