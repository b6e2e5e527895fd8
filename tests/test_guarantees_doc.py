"""docs/guarantees.md names the test that holds each promise: every name must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_guarantees_exists():
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", text))  # test names, not file names
    files = set(re.findall(r"`(tests/[\w/]+\.py)", text))
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))
    assert len(named) > 20
    assert not named - defined, f"docs/guarantees.md names tests that do not exist: {sorted(named - defined)}"
    assert all((ROOT / f).exists() for f in files)
