"""Shared fixtures. Real-data tests use ``data_home``: it points at ``SPRED_DATA`` and
skips with a clear message when the staged datasets are not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use small tensors: one intra-op thread is faster and immune to a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_home() -> Path:
    root = os.environ.get("SPRED_DATA")
    if not root or not (Path(root) / "MANIFEST.md").is_file():
        pytest.skip(
            "real datasets not found: set SPRED_DATA to the folder holding MANIFEST.md "
            f"(currently SPRED_DATA={root!r})"
        )
    return Path(root)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture
def spred_cli():
    """Run the ``spred`` command in-process: ``spred_cli("run", "lasso", ...)`` gives ``(exit code, stderr)``."""
    import contextlib
    import io

    from spred.cli import main

    def run(*argv):
        stderr = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            code = main(["-q", *argv])
        return code, stderr.getvalue()

    return run
