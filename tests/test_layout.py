"""How the tests are laid out: shared helpers live in tests/conftest.py, and no test file imports
another test file (each one runs, and fails, on its own)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
LOADERS = {"import_module", "__import__"}  # importlib.import_module("test_x"), __import__(...)


def imported_test_modules(source: str) -> list[str]:
    """The ``test_*`` modules that ``source`` imports, statically or by a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.level or not node.module:  # `from . import test_x`, `from .test_x import y`
                names += [alias.name for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in LOADERS):
            names = [node.args[0].value]
        else:
            continue
        found += [name for name in names if name.split(".")[-1].startswith("test_")
                  or name.split(".")[0].startswith("test_")]
    return found



@pytest.mark.parametrize("path", sorted(HERE.glob("*.py")), ids=lambda p: p.name)
def test_no_test_file_imports_another_test_file(path):
    imported = imported_test_modules(path.read_text(encoding="utf-8"))
    assert not imported, (f"{path.name} imports {imported}; move the shared helpers to "
                          "tests/conftest.py and import them from there")


def test_the_check_sees_every_way_of_importing_a_test_file():
    for source in ["from test_training import run", "import test_training",
                   "import test_training as t", "from tests.test_training import run",
                   "from . import test_training", "from .test_training import run",
                   "import importlib\nimportlib.import_module('test_training')",
                   "__import__('test_training')"]:
        assert imported_test_modules(source), source
    for source in ["from conftest import tiny_data", "import pytest",
                   "from finetuner.params import parse_params", "from tests import conftest"]:
        assert not imported_test_modules(source), source


def test_the_plain_test_command_runs_each_file_whole_on_one_of_the_workers():
    """`python -m pytest` (the README's command) spreads the files over the cores and keeps each
    file on one worker, so a module's chain of DVC runs is built once (docs/extending.md)."""
    import shlex
    import tomllib
    with open(HERE.parent / "pyproject.toml", "rb") as f:
        addopts = shlex.split(tomllib.load(f)["tool"]["pytest"]["ini_options"]["addopts"])
    assert "-n" in addopts and addopts[addopts.index("-n") + 1] == "auto"
    assert "--dist" in addopts and addopts[addopts.index("--dist") + 1] == "loadfile"
    assert "--no-loadscope-reorder" in addopts  # conftest.FIRST's order: the longest first
    marked = [path.name for path in HERE.glob("*.py") if path.name != Path(__file__).name
              and "mark.xdist_group" in path.read_text(encoding="utf-8")]
    assert not marked, f"{marked}: xdist_group marks do nothing under --dist loadfile"


@pytest.mark.parametrize("path", sorted(HERE.glob("*.py")), ids=lambda p: p.name)
def test_no_test_reads_the_workspace_params_yaml(path):
    """Each `dvc exp run -S ...` leaves its values in the workspace's params.yaml (a user's
    `-S evaluate.test_dir=my_test` once failed a test that copied it): tests take the demo's
    composed from conf/ (conftest.demo_params); test_presets alone compares the file itself."""
    if path.name in ("test_presets.py", "test_layout.py"):
        return
    text = path.read_text()
    for pattern in ('ROOT / "params.yaml"', "ROOT / 'params.yaml'"):
        assert pattern not in text, f"{path.name} reads {pattern}: use conftest.demo_params()"
