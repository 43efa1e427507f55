"""Regenerate the Python stubs (messages, gRPC, mypy stubs) from protos/ into protos/gen/python.

The proto package root equals the Python import root (``mistudio.export.v1``), so the generated
imports need no rewriting. Run through ``make protos``; ``make protos-check`` fails on drift.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = PROTO_ROOT / "gen" / "python"
REQUIRED_GRPCIO_TOOLS = "1.85."


def googleapis_proto_root() -> Path:
    """Folder holding google/rpc/status.proto, shipped by googleapis-common-protos."""
    import google.rpc

    return Path(google.rpc.__path__[0]).parent.parent


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    """The contract files, relative to ``root`` (the import root protoc and buf see)."""
    return sorted(str(p.relative_to(root)) for p in (root / "mistudio").rglob("*.proto"))


def include_args(root: Path = PROTO_ROOT) -> list[str]:
    """protoc ``-I`` flags: our protos, then googleapis and the well-known types, all offline."""
    well_known = resources.files("grpc_tools") / "_proto"
    return [f"-I{root}", f"-I{googleapis_proto_root()}", f"-I{well_known}"]


def main() -> int:
    version = getattr(grpc_tools, "__version__", None) or _installed_version("grpcio-tools")
    if not version.startswith(REQUIRED_GRPCIO_TOOLS):
        print(f"grpcio-tools {version} found; the stubs are pinned to {REQUIRED_GRPCIO_TOOLS}x")
        return 1
    protos = proto_files()
    if (OUT / "mistudio").exists():
        shutil.rmtree(OUT / "mistudio")
    OUT.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        *include_args(),
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        return 1
    for folder in [OUT / "mistudio", *[p for p in (OUT / "mistudio").rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    (OUT / "mistudio" / "py.typed").touch()  # the client package (OUT/pyproject.toml) is typed
    print(f"generated {len(protos)} proto files into {OUT.relative_to(ROOT)}")
    return 0


def _installed_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
