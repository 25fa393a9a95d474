"""Generated protobuf modules (do not edit; run ``scripts/gen_protos.py``).

Sources are the hand-written ``.proto`` files in ``packages/containerd-shimkit/protos``.
"""
