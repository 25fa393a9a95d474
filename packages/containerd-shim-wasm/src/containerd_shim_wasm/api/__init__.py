"""Generated protobuf modules for containerd's gRPC API (``scripts/gen_protos.py``).

Only the services the wasm layer loader uses: containers, images, content and leases
(``protos/containerd_shim_wasm/api/*.proto``). Importing these pulls in ``google.protobuf``;
keep them off the shim's ``start`` path.
"""
