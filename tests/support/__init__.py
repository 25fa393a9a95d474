"""Test infrastructure: a private containerd of a selected version, a CRI client, CNI helpers.

- :mod:`tests.support.containerd` starts containerd 1.6 (Debian bookworm), 1.7 (trixie) or 2.x
  (sid) with its own root, state and sockets, and reports what it leaked when stopped.
- :mod:`tests.support.cri` speaks containerd's CRI gRPC API the way kubelet does, from the CRI
  ``api.proto`` of Debian's ``golang-k8s-cri-api-dev`` compiled at test time.
- :mod:`tests.support.plugin` turns both into pytest fixtures.
"""
