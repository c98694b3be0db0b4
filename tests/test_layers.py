"""The package's floors only point down: each subpackage imports what its docstring allows, no CLI module is
imported by library code, and every subpackage says what it owns."""

from __future__ import annotations

import ast
import importlib

import pytest

from conftest import REPO

PACKAGE = REPO / "eemlflow"
CLI_MODULES = {"eemlflow.command", "eemlflow.train", "eemlflow.export", "eemlflow.ingest", "eemlflow.runs", "eemlflow.sweep.__main__",
               "eemlflow.cli", "eemlflow.progress", "eemlflow.report.__main__"}
ALLOWED = {  # subpackage -> the eemlflow subpackages/modules it may import
    "training": {"errors", "atomic", "training"},
    "measure": {"errors", "atomic", "measure"},
    "store": {"errors", "atomic", "training", "measure", "store"},
    "report": {"errors", "atomic", "measure", "store", "report"},
    "sweep": {"errors", "atomic", "training", "measure", "store", "report", "sweep"},
}


def eemlflow_imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eemlflow"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("eemlflow"))
    return found


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_a_subpackage_imports_only_the_floors_below_it(subpackage):
    for path in (PACKAGE / subpackage).glob("*.py"):
        if module_name(path) in CLI_MODULES:
            continue
        for name in eemlflow_imports(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] in {"errors", "atomic", "training", "measure", "store", "report", "sweep", "runner",
                                                "train", "export", "ingest", "runs", "cli", "progress"}:
                assert parts[1] in ALLOWED[subpackage], f"{module_name(path)} imports {name}"


def test_no_library_module_imports_a_command_line_module():
    for path in list(PACKAGE.rglob("*.py")) + list((REPO / "benchmarks").glob("*.py")):
        if module_name(path) in CLI_MODULES:
            continue
        imported = {n for n in eemlflow_imports(path) if n in CLI_MODULES}
        assert not imported, f"{module_name(path)} imports the command-line module(s) {imported}"


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_every_subpackage_says_what_it_owns_and_may_import(subpackage):
    doc = importlib.import_module(f"eemlflow.{subpackage}").__doc__ or ""
    assert "Owns" in doc and "import" in doc, doc
