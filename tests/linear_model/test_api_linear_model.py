"""Public names, docstrings (numpydoc sections and every parameter documented)."""

from __future__ import annotations

import inspect

import pytest

import spred.linear_model as lm


def test_all_is_consistent():
    assert sorted(lm.__all__) == sorted(set(lm.__all__))
    for name in lm.__all__:
        assert hasattr(lm, name)
    public = {n for n in dir(lm) if not n.startswith("_") and callable(getattr(lm, n))}
    assert public <= set(lm.__all__)


def _documented_callables():
    for name in lm.__all__:
        obj = getattr(lm, name)
        yield name, obj
        if inspect.isclass(obj):
            for meth in ("fit", "partial_fit", "predict", "predict_proba", "predict_log_proba"):
                if meth in vars(obj):
                    yield f"{name}.{meth}", vars(obj)[meth]


@pytest.mark.parametrize(("name", "obj"), list(_documented_callables()))
def test_docstring_documents_every_parameter(name, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    target = obj.__init__ if inspect.isclass(obj) else obj
    target = getattr(target, "__wrapped__", target)
    params = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
    if params:
        assert "Parameters\n----------" in doc, f"{name}: no Parameters section"
    for p in params:
        assert f"\n{p} :" in doc or doc.startswith(f"{p} :"), f"{name}: parameter {p!r} undocumented"
    if not inspect.isclass(obj) and name.split(".")[-1] not in ("__init__",):
        assert "Returns\n-------" in doc, f"{name}: no Returns section"
