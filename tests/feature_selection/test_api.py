"""The public surface of spred.feature_selection: __all__, docstrings."""

from __future__ import annotations

import inspect

import spred.feature_selection as fs
from spred.feature_selection import SpredSelector


def test_all_is_consistent():
    assert sorted(fs.__all__) == fs.__all__
    for name in fs.__all__:
        assert hasattr(fs, name)
    public = {n for n, v in vars(fs).items() if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))}
    assert public == set(fs.__all__)


def test_every_constructor_parameter_is_documented():
    doc = SpredSelector.__doc__
    for name in inspect.signature(SpredSelector).parameters:
        assert f"\n    {name} :" in doc or f", {name} :" in doc or f"\n    {name}," in doc, name


def test_public_methods_have_numpydoc_sections():
    for name in ("fit", "predict", "predict_proba", "score"):
        doc = getattr(SpredSelector, name).__doc__
        assert "Parameters\n        ----------" in doc and "Returns\n        -------" in doc, name
