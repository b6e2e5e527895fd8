"""The redesign's invariants, held by tests: one definition of each rule, small modules and functions.

A concept written twice drifts apart (issue 18 found the zero rule in eight places). These
tests read the package's source, so a second copy or an oversized function fails CI with the
place to look at.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import spred

SRC = Path(spred.__file__).parent
FILES = sorted(SRC.rglob("*.py"))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _code_lines(node: ast.AST, source: list[str]) -> int:
    """Lines of code of a function: its body's lines without the docstring, blank lines and comments."""
    body = node.body
    first = body[0]
    skip = set()
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        skip = set(range(first.lineno, first.end_lineno + 1))
    lines = range(body[0].lineno, node.end_lineno + 1)
    return sum(1 for i in lines if i not in skip and source[i - 1].strip() and not source[i - 1].strip().startswith("#"))


def _functions():
    for path in FILES:
        text = path.read_text()
        source = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(SRC)}:{node.lineno} {node.name}", _code_lines(node, source)


def test_no_module_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in FILES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {long}"


def test_no_function_over_the_limit():
    long = {name: n for name, n in _functions() if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code (docstrings aside): {long}"


@pytest.mark.parametrize(
    "name, home",
    [
        ("group_norms", "nn/_rules.py"),
        ("zero_mask", "nn/_rules.py"),
        ("zero_units", "nn/_rules.py"),
        ("kkt_residuals", "nn/_rules.py"),
        ("kkt_zero", "nn/_rules.py"),
        ("decays_decoupled", "nn/_optim.py"),
        ("check_int", "_validation.py"),
        ("check_float", "_validation.py"),
        ("param_error", "_validation.py"),
    ],
)
def test_each_rule_has_one_definition(name, home):
    pattern = re.compile(rf"^\s*def {name}\(", re.MULTILINE)
    where = [str(p.relative_to(SRC)) for p in FILES if pattern.search(p.read_text())]
    assert where == [home]


def test_no_private_copies_of_the_checkers():
    """The hand-written ``_check_int`` / ``_check_float`` / ``_check_real`` helpers are gone: spred._validation serves all."""
    pattern = re.compile(r"^\s*def _check_(int|float|real|positive|lam|width)\(", re.MULTILINE)
    where = [str(p.relative_to(SRC)) for p in FILES if pattern.search(p.read_text())]
    assert not where


def test_loggers_are_named_after_their_module():
    """``getLogger(__name__)`` everywhere: the "spred" logger is their parent, so configuring it still works."""
    where = [str(p.relative_to(SRC)) for p in FILES if 'getLogger("spred")' in p.read_text()]
    assert not where


def test_nn_and_compress_import_no_sklearn_or_matplotlib():
    bad = []
    for path in FILES:
        rel = path.relative_to(SRC)
        if rel.parts[0] not in ("nn", "compress"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{rel}: {n}" for n in names if n.split(".")[0] in ("sklearn", "matplotlib", "numpy")]
    assert not bad
