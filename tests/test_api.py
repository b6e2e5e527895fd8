"""Package-level contracts: public names, light imports."""

import subprocess
import sys

import pytest

import spred
import spred.nn


@pytest.mark.parametrize("module", [spred, spred.nn])
def test_all_names_exist_and_are_documented(module):
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        obj = getattr(module, name)
        if callable(obj):
            assert obj.__doc__, f"{module.__name__}.{name} has no docstring"


def test_import_spred_is_torch_only():
    code = "import sys, spred; bad = [m for m in ('matplotlib', 'sklearn', 'pandas', 'scipy') if m in sys.modules]; print(','.join(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import spred pulled in {out}"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "spred.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "run" in out
