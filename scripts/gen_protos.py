#!/usr/bin/env python3
"""Regenerate the protobuf modules checked into the packages (or check they are current).

Each distribution keeps its hand-written ``.proto`` files under ``packages/<dist>/protos/``,
laid out by Python package path, so that the generated imports are absolute
(``from containerd_shimkit.api import types_pb2``). Output goes to ``packages/<dist>/src/``.

Usage:
    python scripts/gen_protos.py          # regenerate in place
    python scripts/gen_protos.py --check  # exit 1 when a checked-in module is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "packages"


def proto_roots() -> list[Path]:
    return sorted(p for p in PACKAGES.glob("*/protos") if any(p.rglob("*.proto")))


def generate(proto_root: Path, out_dir: Path) -> None:
    from grpc_tools import protoc  # imported here: only this tool needs grpcio-tools

    include = Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    # Every root may import the shimkit protos (shared containerd types).
    shimkit_root = PACKAGES / "containerd-shimkit" / "protos"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{shimkit_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {proto_root}")


def generated_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*_pb2.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    args = parser.parse_args()
    stale: list[str] = []
    for proto_root in proto_roots():
        src = proto_root.parent / "src"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            generate(proto_root, out)
            for rel in generated_files(out):
                target = src / rel
                if args.check:
                    if not target.exists() or not filecmp.cmp(out / rel, target, shallow=False):
                        stale.append(str(target.relative_to(ROOT)))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out / rel, target)
            expected = set(generated_files(out))
            for rel in generated_files(src):
                if rel not in expected:
                    if args.check:
                        stale.append(f"{src / rel} (no .proto produces it)")
                    else:
                        (src / rel).unlink()
    if stale:
        print("stale generated protobuf modules (run scripts/gen_protos.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
