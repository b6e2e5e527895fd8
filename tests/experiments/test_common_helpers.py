"""The config rules and the log helper of spred.experiments._common."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from spred.experiments import _common as C


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    n: int = 3
    lr: float = 0.1
    names: tuple = ("a",)
    seeds: tuple = (0, 1)
    lrs: dict = dataclasses.field(default_factory=lambda: {"a": 0.1})
    flag: bool = True
    kind: str = "x"


RULES = {
    "n": C.an_int(1),
    "lr": C.a_float(0.0, low_open=True),
    "names": C.some_of(("a", "b")),
    "seeds": C.tuple_of(C.an_int(0), "a non-empty tuple of ints >= 0", distinct=True),
    "lrs": C.mapping_of(C.a_float(0.0, low_open=True), "a mapping name -> lr"),
    "flag": C.a_bool(),
    "kind": C.one_of(("x", "y")),
}


def test_check_fields_normalises_and_names_the_config_class():
    checked = C.check_fields(DemoConfig(seeds=[2, 3], names=["b"]), RULES)
    assert checked["seeds"] == (2, 3) and checked["names"] == ("b",) and checked["lr"] == 0.1


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"n": 0}, ValueError, r"^The 'n' parameter of DemoConfig must be an int >= 1. Got 0 instead.$"),
        ({"lr": "fast"}, TypeError, r"^The 'lr' parameter of DemoConfig must be a float in the range \(0, inf\). Got 'fast' of type str instead.$"),
        ({"names": ("c",)}, ValueError, r"The 'names' parameter of DemoConfig must be a non-empty tuple of distinct values from \('a', 'b'\)"),
        ({"seeds": (1, 1)}, ValueError, r"The 'seeds' parameter of DemoConfig must be a non-empty tuple of ints >= 0 without repeats. Got \(1, 1\)"),
        ({"seeds": (1, "x")}, TypeError, r"The 'seeds' parameter of DemoConfig must be a non-empty tuple of ints >= 0. Got \(1, 'x'\)"),
        ({"lrs": {"a": -1.0}}, ValueError, r"The 'lrs\['a'\]' parameter of DemoConfig must be a float in the range \(0, inf\). Got -1.0"),
        ({"flag": 1}, TypeError, r"The 'flag' parameter of DemoConfig must be a bool. Got 1 of type int"),
        ({"kind": "z"}, ValueError, r"The 'kind' parameter of DemoConfig must be one of \('x', 'y'\). Got 'z'"),
    ],
)
def test_rules_raise_the_one_message_format(changes, error, match):
    with pytest.raises(error, match=match):
        C.check_fields(dataclasses.replace(DemoConfig(), **changes), RULES)
    with pytest.raises(ValueError, match=r"The 'n' parameter of DemoConfig must be an int <= 2. Got 3 instead."):
        C.check_relation(False, DemoConfig(), "n", "an int <= 2")


def test_quiet_logs_silences_a_subpackage_and_restores_it(caplog):
    log = logging.getLogger("spred.train._loop")
    with caplog.at_level(logging.INFO, logger="spred"):
        with C.quiet_logs("spred.train"):
            log.info("epoch line")
            log.warning("a warning")
            logging.getLogger("spred.experiments.x").info("kept")
        log.info("after")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a warning", "kept", "after"]
    assert logging.getLogger("spred.train").level == logging.NOTSET


def test_full_batches_gives_exactly_n_steps():
    X, y = torch.arange(6.0).reshape(3, 2), torch.arange(3.0)
    for n_steps in (1, 7, 800, 3001):
        data, epochs = C.full_batches(X, y, n_steps)
        assert epochs * len(data) == n_steps and len(data) <= 100
    data, _ = C.full_batches(X, y, 5)
    xb, yb = next(iter(data))
    assert xb is X and yb is y


def test_write_config_records_the_program_name_not_its_install_path(tmp_path, monkeypatch):
    import json
    import sys

    from spred.experiments._common import write_config

    monkeypatch.setattr(sys, "argv", [str(tmp_path / "venv" / "bin" / "spred"), "run", "demo", "--out", "x"])
    path = write_config(tmp_path / "config.json", {"a": 1}, experiment="demo")
    data = json.loads(path.read_text())
    assert data["argv"] == ["spred", "run", "demo", "--out", "x"]
    assert str(tmp_path) not in path.read_text()
