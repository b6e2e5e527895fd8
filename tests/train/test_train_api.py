"""The public API of spred.train: exported, documented, parameters listed in the docstrings."""

import dataclasses
import inspect
import re

import pytest

import spred.train as train


def test_all_is_consistent():
    assert len(train.__all__) == len(set(train.__all__))
    assert all(hasattr(train, name) for name in train.__all__)


@pytest.mark.parametrize("name", train.__all__)
def test_public_objects_have_docstrings(name):
    obj = getattr(train, name)
    if callable(obj):
        assert inspect.getdoc(obj), f"spred.train.{name} has no docstring"


@pytest.mark.parametrize("func", [train.fit, train.evaluate, train.build_optimizer, train.TargetSparsity, train.Optim, train.Sparsity, train.Checkpoints, train.Runtime])
def test_every_parameter_is_documented(func):
    doc = inspect.getdoc(func)
    section = doc.split("Parameters\n----------", 1)[1]
    documented = set(re.findall(r"^(\w+) :", section, flags=re.MULTILINE))
    params = set(inspect.signature(func).parameters) - {"self"}
    assert params <= documented, f"undocumented: {sorted(params - documented)}"


def test_fit_keeps_the_agreed_signature():
    """Other parts of spred code against these names and defaults (the grouped API of issue 18)."""
    sig = inspect.signature(train.fit)
    expected = {
        "epochs": inspect.Parameter.empty, "loss_fn": None, "batch_size": 128, "val_data": None, "optim": None,
        "sparsity": None, "checkpoints": None, "runtime": None, "callbacks": (),
    }
    assert {k: sig.parameters[k].default for k in expected} == expected
    assert all(sig.parameters[k].kind is inspect.Parameter.KEYWORD_ONLY for k in expected)
    assert sig.parameters["legacy"].kind is inspect.Parameter.VAR_KEYWORD  # the flat keywords of earlier releases


def test_the_option_groups_keep_the_agreed_fields_and_defaults():
    fields = {cls.__name__: {f.name: f.default for f in dataclasses.fields(cls)} for cls in (train.Optim, train.Sparsity, train.Checkpoints, train.Runtime)}
    assert fields == {
        "Optim": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "scheduler": None, "gate_lr": None},
        "Sparsity": {"target": None, "threshold": 0.0, "freeze_zeros": False, "mask": None},
        "Checkpoints": {"dir": None, "resume": False},
        "Runtime": {"seed": 0, "device": None, "progress": True, "autocast": None, "eval_batch_size": 1024, "early_stopping": None, "history": True},
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.Optim().lr = 1.0
