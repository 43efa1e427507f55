"""Services meet only through the protobuf contracts: no service package imports another one,
and no package's modules import each other in a cycle.

Only `mistudio_cli` (the command line, the demo and the in-process stack) may import the services'
server builders; each service imports its own package, `mistudio_common` and the generated stubs.
The gateway is a client of the export service alone, so of the contracts it imports only the
export service's and the shared messages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[1] / "services"
FIRST_PARTY = ("mistudio", "mistudio_")
"""Top-level names that belong to this project: the generated stubs and every package."""

ALLOWED: dict[str, set[str]] = {
    "mistudio_common": {"mistudio.common"},
    "mistudio_compute": {
        "mistudio_common",
        "mistudio.common",
        "mistudio.compute",
        "mistudio.store",
    },
    "mistudio_store": {
        "mistudio_common",
        "mistudio.common",
        "mistudio.store",
        "mistudio.export",
    },
    "mistudio_export": {
        "mistudio_common",
        "mistudio.common",
        "mistudio.compute",
        "mistudio.store",
        "mistudio.export",
    },
    "mistudio_gateway": {"mistudio_common", "mistudio.common", "mistudio.export"},
}
"""What each package may import besides itself; a `mistudio.X` entry is the X contract's stubs."""


def package_folder(package: str) -> Path:
    """services/<name>/mistudio_<name>: the layout every package follows."""
    return SERVICES / package.removeprefix("mistudio_") / package


def imported_modules(source: Path) -> set[str]:
    """Every module `source` imports, at the top or inside a function."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def first_party_owner(module: str) -> str | None:
    """Which contract or package a module is in: `mistudio.export.v1.x_pb2` → `mistudio.export`."""
    parts = module.split(".")
    if parts[0] == "mistudio":
        return ".".join(parts[:2])
    if parts[0].startswith(FIRST_PARTY[1]):
        return parts[0]
    return None


def foreign_imports(package: str, folder: Path) -> list[str]:
    """`file: module` for each import in `folder` of a first-party package `package` may not use."""
    found = []
    for source in sorted(folder.rglob("*.py")):
        for module in sorted(imported_modules(source)):
            owner = first_party_owner(module)
            if owner is not None and owner != package and owner not in ALLOWED[package]:
                found.append(f"{source.relative_to(folder.parent)}: {module}")
    return found


def test_every_package_under_services_has_a_rule() -> None:
    packages = {folder.name for folder in SERVICES.glob("*/mistudio_*") if folder.is_dir()}
    assert packages == {*ALLOWED, "mistudio_cli"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_service_imports_only_itself_the_common_package_and_the_contracts(package: str) -> None:
    assert foreign_imports(package, package_folder(package)) == []


def test_the_rule_catches_an_import_of_another_service_even_inside_a_function(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mistudio_gateway"
    folder.mkdir()
    (folder / "app.py").write_text(
        "from mistudio.export.v1 import export_service_pb2\n"
        "from mistudio_common.errors import InvalidArgument\n"
        "def start():\n"
        "    from mistudio_export.server import build_export_server\n"
        "    from mistudio.store.v1 import store_service_pb2\n"
    )
    assert foreign_imports("mistudio_gateway", folder) == [
        "mistudio_gateway/app.py: mistudio.store.v1",
        "mistudio_gateway/app.py: mistudio_export.server",
    ]


def import_graph(folder: Path) -> dict[str, set[str]]:
    """Each module of the package in `folder` and its package's modules that it imports."""
    modules = {
        ".".join(source.relative_to(folder.parent).with_suffix("").parts).removesuffix(
            ".__init__"
        ): source
        for source in folder.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, source in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from package import module` imports the module
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


@pytest.mark.parametrize("package", sorted({*ALLOWED, "mistudio_cli"}))
def test_no_package_imports_its_own_modules_in_a_cycle(package: str) -> None:
    assert import_cycles(import_graph(package_folder(package))) == []


def test_the_cycle_check_finds_modules_that_import_each_other_even_inside_a_function(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mistudio_compute"
    folder.mkdir()
    (folder / "planning.py").write_text("from mistudio_compute.run_dashboards import CHUNK\n")
    (folder / "run_dashboards.py").write_text(
        "from mistudio_compute import jobs\ndef run():\n    import mistudio_compute.planning\n"
    )
    (folder / "jobs.py").write_text("from mistudio_common.errors import InvalidArgument\n")
    assert import_cycles(import_graph(folder)) == [
        ["mistudio_compute.planning", "mistudio_compute.run_dashboards"]
    ]
