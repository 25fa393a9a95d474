"""Unit tests of the cgroup support (fake cgroupfs trees; no root needed)."""
