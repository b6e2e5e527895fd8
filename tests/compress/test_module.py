"""Module boundaries of spred.compress: torch only, Torch-Pruning imported lazily, documented API."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import spred.compress

ALLOWED_TOP_LEVEL = {"torch", "spred"}
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only: imports inside functions are lazy by design
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_compress_imports_only_torch_and_the_standard_library():
    for path in Path(spred.compress.__file__).parent.glob("*.py"):
        third_party = _imports(path) - STDLIB - {"__future__"}
        assert third_party <= ALLOWED_TOP_LEVEL, f"{path.name} imports {sorted(third_party - ALLOWED_TOP_LEVEL)}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spred."):
                # spred._validation (input validation) and spred._inputs (example inputs) import only torch and the standard library
                assert node.module.split(".")[1] in {"nn", "compress", "_validation", "_inputs"}, f"{path.name} imports {node.module}"


def test_importing_compress_does_not_import_torch_pruning_or_matplotlib():
    code = "import sys, spred.compress; print(sorted(m for m in ('torch_pruning', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_all_is_consistent_and_documented():
    assert sorted(spred.compress.__all__) == list(spred.compress.__all__)
    for name in spred.compress.__all__:
        obj = getattr(spred.compress, name)
        assert inspect.getdoc(obj), f"spred.compress.{name} has no docstring"
    public = {n for n, o in vars(spred.compress).items() if not n.startswith("_") and not inspect.ismodule(o)}
    assert public == set(spred.compress.__all__)
