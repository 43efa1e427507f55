"""The wheels bench/gpu.sh needs on a lent device machine, fetched here into .whl/ours.

The device machine reaches no package registry, and its python3 (3.12) already holds PyTorch
with CUDA and most of what the export imports (bench/device_packages.txt). What it lacks
travels with the working tree as wheels, at the versions this checkout's .venv runs: the
closure of the project's runtime dependencies, less what the device has and less what the
bench's path never imports (``LEFT_OUT``). A device call carries at most 64 MiB, the tree
included, so the total is checked against that.

    .venv/bin/python bench/gpu_wheels.py        # then: device run with carry [".whl"]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".whl" / "ours"
DEVICE_PACKAGES = REPO / "bench" / "device_packages.txt"
DEVICE_PYTHON = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
CARRY_LIMIT = 64 << 20
"""What one device call carries: the working tree and the carried paths together."""
LEFT_OUT = {
    "torch": "the device's own CUDA build",
    "transformer-lens": "the bench model is a llama2c checkpoint, run by the lean forward",
    "ray": "an extra, for bench/gpu.sh --sharded only (its wheel alone is over the limit)",
    "psycopg": "the local stack's store keeps its rows in SQLite",
    "psycopg-binary": "the local stack's store keeps its rows in SQLite",
}
CARRIED_ANYWAY = {
    "protobuf": "the generated code needs a runtime at least as new as the one it was made by",
    "grpcio": "the generated stubs check the runtime's version",
}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str]:
    lines = DEVICE_PACKAGES.read_text(encoding="utf-8").splitlines()
    return {normalised(line) for line in lines if line and not line.startswith("#")}


def runtime_closure(on_device: set[str]) -> dict[str, str]:
    """Every package the project's runtime dependencies pull in that the device lacks (or is
    carried anyway), with the version installed here; what the device has brings its own
    dependencies there, and ``LEFT_OUT`` is not walked into."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pending = [Requirement(r).name for r in project["dependencies"]]
    found: dict[str, str] = {}
    while pending:
        name = normalised(pending.pop())
        if name in found or name in LEFT_OUT or (name in on_device and name not in CARRIED_ANYWAY):
            continue
        dist = metadata.distribution(name)
        found[name] = dist.version
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def tree_bytes() -> int:
    """The working tree as a device call sends it (tracked files; untracked ones add to it)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed if name)


def fetch(requirements: list[str], python: str) -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    for stale in WHEELS.glob("*.whl"):
        stale.unlink()
    platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platforms,
         "--dest", str(WHEELS), *requirements],
        check=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--list", action="store_true", help="print what would be fetched")
    parser.add_argument(
        "--python", default=DEVICE_PYTHON, help="the device's Python (another: to rehearse here)"
    )
    args = parser.parse_args(argv)
    requirements = [f"{n}=={v}" for n, v in sorted(runtime_closure(device_packages()).items())]
    if args.list:
        print("\n".join(requirements))
        return
    fetch(requirements, args.python)
    wheels = sum(p.stat().st_size for p in WHEELS.glob("*.whl"))
    total = wheels + tree_bytes()
    where = WHEELS.relative_to(REPO)
    print(f"{len(requirements)} wheels, {wheels / 2**20:.1f} MiB in {where}; with the tree "
          f"{total / 2**20:.1f} MiB of the {CARRY_LIMIT >> 20} MiB a call carries")  # fmt: skip
    if total > CARRY_LIMIT:
        raise SystemExit("over what one device call carries: leave out more (LEFT_OUT)")


if __name__ == "__main__":
    main()
