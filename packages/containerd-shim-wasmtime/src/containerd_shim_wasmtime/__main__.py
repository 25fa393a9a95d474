"""Entry point of ``containerd-shim-wasmtime-v1`` (runtime ``io.containerd.wasmtime.v1``)."""

from containerd_shim_wasm.cli import ShimCli

from .shim import WasmtimeShim


def main() -> None:
    """Run the wasmtime shim."""
    ShimCli.run(WasmtimeShim)


if __name__ == "__main__":
    main()
