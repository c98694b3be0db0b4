"""The package's floors only point down: each subpackage imports what its docstring allows, no CLI module is
imported by library code, and every subpackage says what it owns."""

from __future__ import annotations

import ast
import importlib

import pytest
from conftest import REPO

PACKAGE = REPO / "eemlflow"
CLI_MODULES = {"eemlflow.command", "eemlflow.train", "eemlflow.launch", "eemlflow.export", "eemlflow.ingest",
               "eemlflow.runs", "eemlflow.sweep.__main__", "eemlflow.cli", "eemlflow.progress",
               "eemlflow.report.__main__"}
FLOORS = {"errors", "atomic", "lazy", "parent", "training", "measure", "store", "compare", "report", "sweep", "runner",
          "resume"}
ALLOWED = {  # a floor (subpackage or top-level library module) -> the floors it may import
    "errors": set(),
    "atomic": set(),
    "lazy": set(),
    "parent": set(),
    "training": {"errors", "atomic", "lazy", "training"},
    "measure": {"errors", "atomic", "lazy", "parent", "measure"},
    "store": {"errors", "atomic", "lazy", "parent", "training", "measure", "store"},
    "compare": {"errors", "atomic", "lazy", "measure", "store", "compare"},
    "report": {"errors", "atomic", "lazy", "measure", "store", "compare", "report"},
    "sweep": {"errors", "atomic", "lazy", "parent", "training", "measure", "store", "compare", "report", "sweep"},
    "resume": {"errors", "atomic", "lazy", "training", "store"},
    "runner": {"errors", "atomic", "lazy", "training", "measure", "store", "resume", "runner"},
}
UI_PACKAGES = {"rich", "argparse"}  # terminal output and command lines: the command-line modules' business


def imports(path) -> set[str]:
    """Every module ``path`` imports (absolute names), at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module.startswith("eemlflow"):
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def eemlflow_imports(path) -> set[str]:
    return {n for n in imports(path) if n.startswith("eemlflow")}


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def floor_of(path) -> str:
    """``eemlflow/measure/counters/rapl.py`` -> ``measure``; ``eemlflow/runner.py`` -> ``runner``."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if module_name(p) not in CLI_MODULES | {"eemlflow.__init__"})


def violations(path, floor: str) -> list[str]:
    """What a library module on ``floor`` imports that it may not: a floor above it, or a UI package."""
    found = []
    for name in sorted(imports(path)):
        parts = name.split(".")
        if parts[0] == "eemlflow" and len(parts) > 1 and parts[1] in FLOORS and parts[1] not in ALLOWED[floor]:
            found.append(f"imports {name}: {floor} may import {sorted(ALLOWED[floor])}")
        if parts[0] in UI_PACKAGES:
            found.append(f"imports {name}: displays and argument parsing belong to command-line modules")
    return found


def test_every_module_is_a_command_line_module_or_on_a_floor():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        assert name in CLI_MODULES or name == "eemlflow.__init__" or floor_of(path) in ALLOWED, (
            f"{name} is on no floor: add it to ALLOWED or CLI_MODULES in tests/test_layers.py")


@pytest.mark.parametrize("path", LIBRARY, ids=module_name)
def test_a_library_module_imports_only_the_floors_below_it_and_no_ui(path):
    assert violations(path, floor_of(path)) == [], module_name(path)


def test_the_layer_check_fails_a_library_module_that_prints_with_rich_or_reaches_up(tmp_path):
    clean = PACKAGE / "measure" / "units.py"
    assert violations(clean, "measure") == []
    broken = tmp_path / "units.py"
    broken.write_text(clean.read_text() + "\n\ndef show():\n    from rich.console import Console\n"
                      "    from eemlflow.sweep import grid\n    Console().print(grid)\n")
    found = violations(broken, "measure")
    assert len(found) == 3 and "imports rich.console: displays" in found[2], found
    assert found[0].startswith("imports eemlflow.sweep: measure may import"), found


def test_no_library_module_imports_a_command_line_module():
    for path in list(PACKAGE.rglob("*.py")) + list((REPO / "benchmarks").glob("*.py")):
        if module_name(path) in CLI_MODULES:
            continue
        imported = {n for n in eemlflow_imports(path) if n in CLI_MODULES}
        assert not imported, f"{module_name(path)} imports the command-line module(s) {imported}"


@pytest.mark.parametrize("subpackage", ["training", "measure", "store", "compare", "report", "sweep"])
def test_every_subpackage_says_what_it_owns_and_may_import(subpackage):
    doc = importlib.import_module(f"eemlflow.{subpackage}").__doc__ or ""
    assert "Owns" in doc and "import" in doc, doc


def test_the_commands_that_never_train_do_not_import_torch_timm_or_codecarbon():
    """`eemlflow export`, `ingest`, `runs` and `report` start in a couple of seconds: importing torch and timm (and
    torchvision's torch._dynamo through them) costs ~10 s on a 2-core machine, for nothing they do."""
    import subprocess
    import sys

    from conftest import cli_env

    probe = ("import sys, eemlflow.export, eemlflow.ingest, eemlflow.runs, eemlflow.report.__main__; "
             "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'codecarbon') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=cli_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("subpackage", ["training", "measure"])
def test_every_name_a_lazy_package_exports_resolves_to_its_module(subpackage):
    """The lazy tables name each export's module by hand: a wrong one would fail only when first used."""
    package = importlib.import_module(f"eemlflow.{subpackage}")
    for name, module in package._EXPORTS.items():
        assert module.startswith(f"eemlflow.{subpackage}."), (name, module)
        assert getattr(package, name) is getattr(importlib.import_module(module), name), name
