"""Tests of deploy/: install.sh, its containerd config helper, the manifests and snippets."""
